"""What watches the cascade's answers: the escalation log (teacher data) and online calibration (agreement).

The tier loop in `cascade.py` calls three hooks, and only when a cascade has a
log or shadow sampling: the last tier's body (teacher logprobs for the log),
each declined answer, and each answer handed to the caller. Everything here
is cheap on the request's task; the log's writing and the shadow calls happen
elsewhere (`escalation_log`, `shadow_sampling`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kascade.api.escalation_record import ModelIdentity
from kascade.runtime.attempts import usage_of
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.escalation.records import DeclinedSeen, answer_of, declined_seen, model_identity

if TYPE_CHECKING:
    from kascade.runtime.attempts import Attempts
    from kascade.runtime.config import RouterConfig, TierConfig
    from kascade.runtime.escalation.keeping import EscalationKeeper
    from kascade.runtime.escalation.log import EscalationLog
    from kascade.runtime.ledger import Ledger
    from kascade.runtime.online.shadow_sampling import AskLastTier, ShadowSampler
    from kascade.runtime.scoring.policy import Decision

Answered = Mapping[str, Any] | Sequence[Mapping[str, Any]]  # a whole response, or a stream's chunks


class AnswerWatch:
    def __init__(self, keeper: EscalationKeeper | None, sampler: ShadowSampler | None, last_tier: TierConfig) -> None:
        self.keeper = keeper
        self.sampler = sampler
        self._last_tier = last_tier
        self._identities: dict[str, ModelIdentity] = {}  # one per tier: records and samples share it

    def identity(self, tier: TierConfig) -> ModelIdentity:
        identity = self._identities.get(tier.name)
        if identity is None:
            identity = self._identities[tier.name] = model_identity(tier)
        return identity

    def last_tier_body(self, endpoint: Endpoint, tier_body: dict[str, Any]) -> dict[str, Any]:
        return tier_body if self.keeper is None else self.keeper.teacher_body(self._last_tier, endpoint, tier_body)

    def declined(
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
        attempts.declined.append(declined_seen(self.identity(tier), decision, seen))

    def answered(
        self,
        tier: TierConfig,
        endpoint: Endpoint,
        body: dict[str, Any],
        answered: Answered,
        attempts: Attempts,
        decision: Decision | None,
    ) -> None:
        """An answer went to the caller: the last tier's (after escalations), or one a tier before it accepted."""
        if decision is None:  # the last tier answered
            if not attempts.declined:
                return
            drawn = self.sampler is not None and self.sampler.drawn()
            if self.keeper is None and not drawn:
                return
            answer = answer_of(endpoint, answered)
            if self.keeper is not None:
                self.keeper.keep(
                    endpoint, body, attempts.declined, self.identity(tier), answer, attempts.answering_tokens(tier.name)
                )
            if drawn:
                assert self.sampler is not None
                self.sampler.note_pairs(attempts.declined, answer.text)
        elif self.sampler is not None and self.sampler.drawn():
            accepted = declined_seen(self.identity(tier), decision, answer_of(endpoint, answered))
            self.sampler.accepted(endpoint, body, [*attempts.declined, accepted], attempts.answering_tokens(tier.name))

    def shadow_answered(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        response: Mapping[str, Any],
        asked: Sequence[DeclinedSeen],
        agreed: bool,
    ) -> None:
        """A shadow call's answer: teacher data too, labelled, when the cascade keeps a log."""
        if self.keeper is not None:
            self.keeper.keep(
                endpoint,
                body,
                asked,
                self.identity(self._last_tier),
                answer_of(endpoint, response),
                usage_of(response),
                agreed=agreed,
            )


def watch_for(
    config: RouterConfig, ledger: Ledger, escalation_log: EscalationLog | None, ask_last_tier: AskLastTier
) -> AnswerWatch | None:
    """The watch a cascade needs: None without a log or shadow sampling, or with a single tier."""
    if len(config.tiers) < 2 or (escalation_log is None and config.shadow_sampling is None):
        return None
    from kascade.runtime.escalation.keeping import EscalationKeeper
    from kascade.runtime.online.shadow_sampling import ShadowSampler

    keeper = EscalationKeeper(escalation_log, config.cascade) if escalation_log is not None else None
    watch = AnswerWatch(keeper, None, config.tiers[-1])
    if config.shadow_sampling is not None:
        watch.sampler = ShadowSampler(
            config.shadow_sampling,
            ledger,
            last_tier=config.tiers[-1].name,
            ask_last_tier=ask_last_tier,
            on_shadow=watch.shadow_answered,
        )
    return watch
