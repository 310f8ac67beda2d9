"""What watches the cascade's answers: the escalation log (teacher data) and online calibration (agreement).

The tier loop in `cascade.py` calls three hooks, and only when a cascade has a
log or shadow sampling: the last tier's body (teacher logprobs for the log),
each declined answer, and each answer handed to the caller. Everything here
is cheap on the request's task; the log's writing and the shadow calls happen
elsewhere (`escalation.log`, `online.shadow_sampling`).

The router's lifespan builds the keeper, the sampler (with its agreement
judge) and a watch over them (`watch_answers`), and hands the watch to the
`Cascade`: the cascade calls the watch, the watch the keeper and the sampler,
the sampler the judge and the keeper; nothing calls back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kascade.api.escalation_record import ModelIdentity
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.escalation.keeping import EscalationKeeper
from kascade.runtime.escalation.records import answer_of, declined_seen, model_identity
from kascade.runtime.online.judges import agreement_judge
from kascade.runtime.online.shadow_sampling import ShadowSampler

if TYPE_CHECKING:
    import aiohttp

    from kascade.runtime.attempts import Attempts
    from kascade.runtime.config import RouterConfig, TierConfig
    from kascade.runtime.engines.base import Engine
    from kascade.runtime.escalation.log import EscalationLog
    from kascade.runtime.ledger import Ledger
    from kascade.runtime.metrics import RouterMetrics
    from kascade.runtime.scoring.policy import Decision

Answered = Mapping[str, Any] | Sequence[Mapping[str, Any]]  # a whole response, or a stream's chunks


class AnswerWatch:
    """`last_tier`: the cascade's last tier, which answers after escalations and is asked for teacher tokens."""

    def __init__(self, keeper: EscalationKeeper | None, sampler: ShadowSampler | None, last_tier: TierConfig) -> None:
        self.keeper = keeper
        self.sampler = sampler
        self._last_tier = last_tier
        self._identities: dict[str, ModelIdentity] = {}  # one per tier, built once

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
                self.sampler.judge_pairs(body, attempts.declined, answer.text)
        elif self.sampler is not None and self.sampler.drawn():
            accepted = declined_seen(self.identity(tier), decision, answer_of(endpoint, answered))
            self.sampler.accepted(endpoint, body, [*attempts.declined, accepted], attempts.answering_tokens(tier.name))


def watch_answers(
    config: RouterConfig,
    ledger: Ledger,
    escalation_log: EscalationLog | None,
    last_engine: Engine,
    *,
    metrics: RouterMetrics,
    session: aiohttp.ClientSession,
) -> AnswerWatch | None:
    """The keeper (with a log) and the shadow sampler and its judge (with online calibration), and the watch the
    cascade calls them through; None with neither, or with a single tier (nothing is ever declined).

    `last_engine` answers the shadow calls (and is the judge where no judge.url is named); an external judge is
    reached on the router's pooled `session`.
    """
    if len(config.tiers) < 2 or (escalation_log is None and config.shadow_sampling is None):
        return None
    last_tier = config.tiers[-1]
    keeper = EscalationKeeper(escalation_log, config.cascade) if escalation_log is not None else None
    sampling = config.shadow_sampling
    sampler = (
        ShadowSampler(
            sampling,
            ledger,
            last_tier=last_tier,
            engine=last_engine,
            judge=agreement_judge(
                sampling,
                ledger,
                last_tier=last_tier,
                last_engine=last_engine,
                timeout_seconds=config.timeout_seconds,
                metrics=metrics,
                session=session,
            ),
            timeout_seconds=config.timeout_seconds,
            keeper=keeper,
        )
        if sampling is not None
        else None
    )
    return AnswerWatch(keeper, sampler, last_tier)
