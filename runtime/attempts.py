"""The calls one request made to its tiers, in order: its trail header and its ledger entry.

Every attempt is kept, the failed and the wasted ones included, because every
one of them was paid for (or at least waited for).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kascade.runtime.ledger import RequestOutcome, TierCall

if TYPE_CHECKING:
    from kascade.runtime.escalation.records import DeclinedSeen
    from kascade.runtime.pre_routing import PassedOver


class Attempts:
    """The calls one request made, in order; becomes the ledger's RequestOutcome."""

    def __init__(self) -> None:
        self.calls: list[TierCall] = []
        self.declined: list[DeclinedSeen] = []  # kept only when the cascade keeps an escalation log
        self.passed_over: list[PassedOver] = []  # tiers skipped on their pre-route score (`pre_routing`)
        self.without_replica: list[str] = []  # tiers skipped: scaled to zero, no ready replica (`replica_absence`)
        # Where each of those skips falls in the trail: (calls made before it, pre-route skips before it).
        self._without_replica_at: list[tuple[int, int]] = []
        self.cold_start_waits: list[tuple[str, float]] = []  # (tier, seconds) waited for the last tier's replica

    @property
    def tiers_skipped(self) -> int:
        """Tiers passed over before they were asked: on their pre-route score, or without a replica."""
        return len(self.passed_over) + len(self.without_replica)

    def skip_without_replica(self, tier: str) -> None:
        """`tier` had no ready replica and is skipped: counted, and `tier=skipped(no-replica)` in the trail."""
        self.without_replica.append(tier)
        self._without_replica_at.append((len(self.calls), len(self.passed_over)))

    def add(self, call: TierCall) -> None:
        self.calls.append(call)

    def set_last_confidence(self, confidence: float) -> None:
        self.calls[-1] = replace(self.calls[-1], confidence=confidence)

    def settle_last(self, *, input_tokens: int, output_tokens: int, ok: bool | None = None) -> None:
        """Fill in the tokens of the last call once its stream ended (and whether it ended well)."""
        last = self.calls[-1]
        self.calls[-1] = replace(
            last, input_tokens=input_tokens, output_tokens=output_tokens, ok=last.ok if ok is None else ok
        )

    def mark_last_failed(self) -> None:
        self.calls[-1] = replace(self.calls[-1], ok=False)

    def answering_tokens(self, tier: str) -> tuple[int, int]:
        """(input, output) tokens of the last successful call to `tier`: the answer's own usage."""
        for call in reversed(self.calls):
            if call.tier == tier and call.ok:
                return call.input_tokens, call.output_tokens
        return 0, 0

    def outcome(self, answered_by: str | None, *, escalated: bool) -> RequestOutcome:
        return RequestOutcome(answered_by=answered_by, calls=tuple(self.calls), escalated=escalated)

    def trail(self) -> str:
        """Each tier tried, in order: its score, `error` if every attempt failed, or just its name; a tier passed
        over on its pre-route score as `skipped(probability)`, one without a ready replica as
        `skipped(no-replica)`."""
        steps: dict[str, str] = {}
        skipped = self._skips_in_order()
        for index, call in enumerate(self.calls):
            while skipped and skipped[0][0] <= index:
                _, tier, step = skipped.pop(0)
                steps[tier] = step
            if call.confidence is not None:
                steps[call.tier] = f"{call.tier}={call.confidence:.4f}"
            elif call.ok:
                steps[call.tier] = call.tier
            else:
                steps.setdefault(call.tier, f"{call.tier}=error")
        for _, tier, step in skipped:
            steps[tier] = step
        return ",".join(steps.values())

    def _skips_in_order(self) -> list[tuple[int, str, str]]:
        """(calls made before it, tier, trail step) of every tier skipped before it was asked, in the order the
        request skipped them: pre-route skips and skips without a replica interleaved as they happened."""
        ordered: list[tuple[int, str, str]] = []
        taken = 0
        for tier, (position, passed_before) in zip(self.without_replica, self._without_replica_at, strict=True):
            ordered.extend(_passed_over_step(passed) for passed in self.passed_over[taken:passed_before])
            taken = max(taken, passed_before)
            ordered.append((position, tier, f"{tier}=skipped(no-replica)"))
        ordered.extend(_passed_over_step(passed) for passed in self.passed_over[taken:])
        return ordered


def _passed_over_step(passed: PassedOver) -> tuple[int, str, str]:
    return passed.position, passed.tier, f"{passed.tier}=skipped({passed.probability:.4f})"


def usage_of(response: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens a response reports; 0 for what is missing or nonsense."""
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) and prompt >= 0 else 0,
        completion if isinstance(completion, int) and completion >= 0 else 0,
    )


def usage_of_chunks(chunks: list[dict[str, Any]]) -> tuple[int, int]:
    """The usage a stream reported (the last chunk that carries one), else a count of content chunks."""
    for chunk in reversed(chunks):
        if isinstance(chunk.get("usage"), dict):
            return usage_of(chunk)
    return 0, sum(1 for chunk in chunks if chunk.get("choices"))
