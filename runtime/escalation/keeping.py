"""The cascade's side of the escalation log: ask the last tier for teacher tokens, offer what was answered.

Kept apart from `cascade.py` so the tier loop reads the same with the log on or
off: `answer_watch.AnswerWatch` calls these hooks only when the cascade keeps a
log.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kascade.api.escalation_record import ModelIdentity, Probe, RecordKind
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.escalation.records import AnswerSeen, DeclinedSeen, EscalationSeen
from kascade.runtime.logprobs import caller_logprobs_request, with_logprobs_requested

if TYPE_CHECKING:
    from kascade.runtime.config import TierConfig
    from kascade.runtime.escalation.log import EscalationLog


class EscalationKeeper:
    def __init__(self, log: EscalationLog, cascade: str) -> None:
        self.log = log
        self.cascade = cascade

    def teacher_body(self, tier: TierConfig, endpoint: Endpoint, tier_body: dict[str, Any]) -> dict[str, Any]:
        """The last tier's body: its top-k logprobs, by token id where the tier can and the caller never sees them."""
        if endpoint is Endpoint.classify:
            return tier_body  # class probabilities come with every classify answer
        caller_asked, _ = caller_logprobs_request(endpoint, tier_body)
        request = with_logprobs_requested(endpoint, tier_body, self.log.config.top_logprobs)
        if tier.returns_token_ids and not caller_asked:
            request["return_tokens_as_token_ids"] = True
        return request

    def keep(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        asked: Sequence[DeclinedSeen],
        answered_by: ModelIdentity,
        answer: AnswerSeen,
        tokens: tuple[int, int],
        *,
        agreed: bool | None = None,
        probe: Probe | None = None,
    ) -> None:
        """Offer an answer of the last tier to the log; never blocks.

        An escalation (`agreed` and `probe` None): `asked` holds the declined
        answers. A shadow sample (`agreed` set): `asked` holds the answers of
        the tiers asked, the accepted one last. A probe (`probe` set): `asked`
        holds the answer of the tier the request was routed past, and `agreed`
        its verdict when it was drawn for calibration and judged.
        """
        self.log.offer(
            EscalationSeen(
                cascade=self.cascade,
                endpoint=endpoint,
                body=body,
                declined=tuple(asked),
                answered_by=answered_by,
                answer=answer,
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                at=datetime.now(UTC),
                kind=record_kind(agreed, probe),
                agreed=agreed,
                probe=probe,
            )
        )


def record_kind(agreed: bool | None, probe: Probe | None) -> RecordKind:
    """A probe when it carries one; else a shadow sample when it has a verdict; else an escalation."""
    if probe is not None:
        return RecordKind.probe
    return RecordKind.escalation if agreed is None else RecordKind.shadow
