"""The cascade's side of the escalation log: ask the last tier for teacher tokens, remember declined answers, offer.

Kept apart from `cascade.py` so the tier loop reads the same with the log on or
off: the loop calls these three hooks only when the cascade keeps a log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kascade.runtime.engines.base import Endpoint
from kascade.api.escalation_record import ModelIdentity
from kascade.runtime.escalation_records import EscalationSeen, answer_of, declined_seen, model_identity
from kascade.runtime.logprobs import caller_logprobs_request, with_logprobs_requested

if TYPE_CHECKING:
    from kascade.runtime.attempts import Attempts
    from kascade.runtime.config import TierConfig
    from kascade.runtime.escalation_log import EscalationLog
    from kascade.runtime.policy import Decision


class EscalationKeeper:
    def __init__(self, log: EscalationLog, cascade: str) -> None:
        self.log = log
        self.cascade = cascade
        self._identities: dict[str, ModelIdentity] = {}  # one per tier: the records share it

    def _identity(self, tier: TierConfig) -> ModelIdentity:
        identity = self._identities.get(tier.name)
        if identity is None:
            identity = self._identities[tier.name] = model_identity(tier)
        return identity

    def teacher_body(self, tier: TierConfig, endpoint: Endpoint, tier_body: dict[str, Any]) -> dict[str, Any]:
        """The last tier's body: its top-k logprobs, by token id where the tier can and the caller never sees them."""
        if endpoint is Endpoint.classify:
            return tier_body  # class probabilities come with every classify answer
        caller_asked, _ = caller_logprobs_request(endpoint, tier_body)
        request = with_logprobs_requested(endpoint, tier_body, self.log.config.top_logprobs)
        if tier.returns_token_ids and not caller_asked:
            request["return_tokens_as_token_ids"] = True
        return request

    def note_declined(
        self,
        attempts: Attempts,
        tier: TierConfig,
        endpoint: Endpoint,
        decision: Decision,
        response: Mapping[str, Any] | None,
        buffered: Sequence[Mapping[str, Any]] | None,
    ) -> None:
        """A tier's answer was declined: keep it (whole, or the prefix an early-mode stream was scored on)."""
        seen = answer_of(endpoint, response if response is not None else buffered or [])
        attempts.declined.append(declined_seen(self._identity(tier), decision, seen))

    def keep(
        self,
        tier: TierConfig,
        endpoint: Endpoint,
        body: dict[str, Any],
        answered: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        attempts: Attempts,
    ) -> None:
        """Offer an answered escalation (a whole response, or a stream's chunks) to the log; never blocks."""
        answer = answer_of(endpoint, answered)
        input_tokens, output_tokens = attempts.answering_tokens(tier.name)
        self.log.offer(EscalationSeen(
            cascade=self.cascade, endpoint=endpoint, body=body, declined=tuple(attempts.declined),
            answered_by=self._identity(tier), answer=answer, input_tokens=input_tokens, output_tokens=output_tokens,
            at=datetime.now(UTC),
        ))  # fmt: skip
