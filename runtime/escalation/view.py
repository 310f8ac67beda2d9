"""`kascade log stats|show`: what an escalation log holds, summed up and shown. Pure over records; the CLI prints."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from kascade.api.escalation_record import DeclinedAnswer, EscalationRecord, RecordKind


@dataclass
class LogStats:
    records: int = 0
    first: datetime | None = None
    last: datetime | None = None
    by_kind: Counter[str] = field(default_factory=Counter)
    by_endpoint: Counter[str] = field(default_factory=Counter)
    answered_by: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # "small: geometricMean 0.41 < 0.5" bucketed by method
    with_token_ids: int = 0
    redacted: int = 0
    teacher_tokens: int = 0

    def add(self, record: EscalationRecord) -> None:
        self.records += 1
        self.first = record.recorded_at if self.first is None else min(self.first, record.recorded_at)
        self.last = record.recorded_at if self.last is None else max(self.last, record.recorded_at)
        self.by_kind[record.kind.value] += 1
        self.by_endpoint[record.endpoint] += 1
        self.answered_by[record.answered_by.tier] += 1
        if record.kind is RecordKind.shadow:  # an accepted answer also asked of the last tier: no escalation reason
            self.reasons[f"shadow sample, {'agreed' if record.agreed else 'disagreed'} with the last tier"] += 1
        elif record.probe is not None:  # a tier the request was routed past, asked off the path
            for probed in record.declined:
                decided = "kept" if record.probe.kept else "declined"
                self.reasons[f"{probed.model.tier}: routed past, probed ({record.probe.draw.value}): {decided}"] += 1
        else:
            for declined in record.declined:
                self.reasons[
                    escalation_reason(declined.model.tier, declined.method, declined.score, declined.threshold)
                ] += 1
        self.with_token_ids += record.tokens is not None
        self.teacher_tokens += len(record.tokens.token_ids) if record.tokens is not None else 0
        self.redacted += record.redacted


def escalation_reason(tier: str, method: str, score: float, threshold: float) -> str:
    """A declined answer's reason, bucketed by how far below its threshold it scored."""
    if score != score:  # NaN
        return f"{tier}: {method} had no evidence"
    gap = threshold - score
    band = "just below" if gap <= 0.1 else "well below" if gap <= 0.3 else "far below"
    return f"{tier}: {method} {band} {threshold:g}"


def decided_on(answer: DeclinedAnswer) -> str:
    """A tier's answer's score against its threshold: `<` when it was declined, `≥` when it stood (a shadow
    sample's accepted answer, a probe the tier would have kept)."""
    kept = answer.score >= answer.threshold
    return f"{answer.method} {answer.score:.3f} {'≥' if kept else '<'} {answer.threshold:g}"


def kind_note(record: EscalationRecord) -> str:
    """What kind of record it is, for `kascade log show`: nothing for an escalation."""
    if record.kind is RecordKind.shadow:
        return f"shadow sample, {'agreed' if record.agreed else 'disagreed'} with the last tier"
    if record.probe is not None:
        verdict = "" if record.agreed is None else f", {'agreed' if record.agreed else 'disagreed'} with the last tier"
        return (
            f"probe: routed past at pre-route probability {record.probe.keep_probability:.4f}, drawn for "
            f"{record.probe.draw.value} at {record.probe.rate:g}{verdict}"
        )
    return ""


def log_stats(records: Iterable[EscalationRecord]) -> LogStats:
    stats = LogStats()
    for record in records:
        stats.add(record)
    return stats


def prompt_of(record: EscalationRecord) -> str:
    """The request's prompt as text: the last user message, a completion prompt, or a classify input."""
    request = json.loads(record.request)
    messages = request.get("messages")
    if isinstance(messages, list) and messages:
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] or messages
        content = users[-1].get("content") if isinstance(users[-1], dict) else ""
        return content if isinstance(content, str) else json.dumps(content)
    for key in ("prompt", "input"):
        if key in request:
            value = request[key]
            return value if isinstance(value, str) else json.dumps(value)
    return record.request
