"""Running one request through the tiers: call, score, accept or escalate, account.

This is the I/O half of the router. The decisions themselves are pure
(`policy.judge*` scores an answer, `tier_step.next_step` accepts, escalates or
fails); the HTTP surface lives in `router.py`.

One loop (`Cascade._cascade`) serves complete and streamed answers; what
differs is how a tier is called:
- complete: a whole answer, with token logprobs asked of every tier but the last;
- streaming, buffer mode: a tier other than the last gives a whole answer to
  score, replayed as a stream if it stands;
- streaming, early mode: a tier other than the last streams, and its first N
  tokens are scored before the caller is sent anything;
- streaming, last tier: its stream is relayed as it comes.

Rules, in order of the tiers (cheapest first), are `tier_step`'s; a failed call (timeout, refused
connection, 5xx, 429) is retried within the router's budget first (`tier_call`), and every call is
counted in the ledger, the wasted ones included. What watches the answers (escalation log, shadow
samples) is handed in (`answer_watch.AnswerWatch`); thresholds move in place (`set_thresholds`). A
tier with a pre-route score may be passed over before it is asked (`pre_routing`). A tier admits a
request before it is called, within its bounds on calls in flight and queued (`admission`); a stream
holds its tier's slot until it ends.
"""

from __future__ import annotations

import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from kascade.api.modelcascade import StreamingMode
from kascade.runtime.admission import Admission, Slot
from kascade.runtime.answers import Answer, CascadeFailed, CompleteAnswer, StreamingAnswer
from kascade.runtime.attempts import Attempts
from kascade.runtime.config import RouterConfig, TierConfig
from kascade.runtime.engines.base import Endpoint, Engine, TierError
from kascade.runtime.ledger import Ledger
from kascade.runtime.logprobs import with_logprobs_requested
from kascade.runtime.metrics import RouterMetrics
from kascade.runtime.pre_routing import PreRouting
from kascade.runtime.presentation import present, replay_as_chunks
from kascade.runtime.replica_absence import NoReplica, note_replica_absences
from kascade.runtime.scoring.confidence import required_top_logprobs
from kascade.runtime.scoring.policy import Decision, judge
from kascade.runtime.tier_call import Called, RetryBudget, call_whole, open_stream
from kascade.runtime.tier_step import Step, Verdict, failure_of, next_step
from kascade.runtime.tier_stream import (
    OpenStream,
    relay,
    score_prefix,
    streaming_overrides,
)

if TYPE_CHECKING:
    from kascade.runtime.answer_watch import AnswerWatch

log = logging.getLogger("kascade.router.calibration")

_Answer = TypeVar("_Answer", bound="Answer")


@dataclass(frozen=True)
class Tier:
    config: TierConfig
    engine: Engine
    is_last: bool

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True, slots=True)
class _Escalation:
    """An answer declined (or a call failed) at `tier`: the next tier must admit the request before it goes on."""

    tier: Tier
    called: Called


_CallTier = Callable[[Tier, Endpoint, dict[str, Any], Attempts], Awaitable[Called]]
# (tier, endpoint, body, called, attempts, escalated, kept_under_load) -> the answer
_HandOver = Callable[[Tier, Endpoint, dict[str, Any], Called, Attempts, bool, bool], _Answer]


class Cascade:
    def __init__(
        self,
        config: RouterConfig,
        engines: Mapping[str, Engine],
        ledger: Ledger,
        metrics: RouterMetrics | None = None,
        *,
        watch: AnswerWatch | None = None,
        latency_clock: Callable[[], float] = time.perf_counter,
        probe_draw: Callable[[], float] = random.random,
    ) -> None:
        """`watch`: what watches the answers (log, shadow samples), built by the lifespan; `probe_draw`: pre-routing's."""
        missing = [tier.name for tier in config.tiers if tier.name not in engines]
        if missing:
            raise ValueError(f"no engine for tier(s): {', '.join(missing)}")
        self.config = config
        self.tiers = [
            Tier(config=tier, engine=engines[tier.name], is_last=index == len(config.tiers) - 1)
            for index, tier in enumerate(config.tiers)
        ]
        self.ledger = ledger
        self.metrics = metrics
        self._watch = watch
        sampler, keeper = (watch.sampler, watch.keeper) if watch else (None, None)
        self._pre_routing = PreRouting.of(config, engines, ledger, metrics, sampler, draw=probe_draw, keeper=keeper)
        self._budget = RetryBudget(
            config.timeout_seconds, config.retries, config.retry_backoff_seconds, latency_clock=latency_clock
        )
        self.admission = Admission(
            config.tiers,
            queue_timeout_seconds=config.queue_timeout_seconds,
            on_escalation_full=config.on_escalation_full,
            ledger=ledger,
            metrics=metrics,
        )

    @property
    def last_tier(self) -> Tier:
        return self.tiers[-1]

    async def close(self) -> None:
        """Stop the background work the cascade started itself: pre-routing's probes."""
        if self._pre_routing is not None:
            await self._pre_routing.close()

    def set_thresholds(self, thresholds: Mapping[str, float]) -> dict[str, float]:
        """Put new thresholds in force on the scored tiers, without a restart; the ones that changed.

        A request already in its tier loop keeps the thresholds it started with.
        """
        changed: dict[str, float] = {}
        tiers = list(self.tiers)
        for index, tier in enumerate(tiers):
            accept = tier.config.accept
            wanted = thresholds.get(tier.name)
            if accept is None or wanted is None or wanted == accept.threshold:
                continue
            config = tier.config.model_copy(update={"accept": accept.model_copy(update={"threshold": wanted})})
            tiers[index] = Tier(config=config, engine=tier.engine, is_last=tier.is_last)
            changed[tier.name] = wanted
        if changed:
            self.tiers = tiers
            log.info("thresholds in force: %s", ", ".join(f"{name}={value:g}" for name, value in changed.items()))
        return changed

    # `answer` and `answer_streaming` are not async themselves: one coroutine less per request.
    def answer(self, endpoint: Endpoint, body: dict[str, Any]) -> Awaitable[CompleteAnswer]:
        return self._cascade(endpoint, body, self._call_whole, self._complete_answer)

    def answer_streaming(self, endpoint: Endpoint, body: dict[str, Any]) -> Awaitable[StreamingAnswer]:
        """Choose the answering tier, then hand back its chunks.

        The tier is known before the first byte goes out, so the x-kascade-*
        headers are honest, and a failure of every tier is still a proper HTTP
        error rather than a broken stream.
        """
        return self._cascade(endpoint, body, self._call_for_stream, self._streaming_answer)

    # -- the loop --------------------------------------------------------------------------

    async def _cascade(
        self, endpoint: Endpoint, body: dict[str, Any], call_tier: _CallTier, hand_over: _HandOver[_Answer]
    ) -> _Answer:
        """Call each tier in turn, once it admits the request, until a step accepts its answer or fails it."""
        attempts = Attempts()
        handed_over = False
        escalation: _Escalation | None = None
        slot: Slot | None = None
        try:
            for index, tier in enumerate(self.tiers):
                if self._pre_routing and self._pre_routing.passes_over(tier.config, endpoint, body, attempts):
                    continue
                slot = await self._admit(tier, escalation, attempts)
                if slot is None:  # keepSmall: the declined answer in hand is returned
                    assert escalation is not None
                    handed_over = True
                    return hand_over(escalation.tier, endpoint, body, escalation.called, attempts, False, True)
                called = await call_tier(tier, endpoint, body, attempts)
                if called.stream is None:
                    slot.release()
                called.slot = slot
                if isinstance(called.error, NoReplica):  # scaled to zero: the next tier answers (`replica_absence`)
                    continue
                step = next_step(
                    is_last=tier.is_last,
                    on_tier_error=self.config.on_tier_error,
                    decision=called.decision,
                    failed=called.error is not None,
                )
                self._note_step(tier, endpoint, step, called, attempts)
                if step.verdict is Verdict.accept:
                    handed_over = True
                    return hand_over(tier, endpoint, body, called, attempts, index > attempts.tiers_skipped, False)
                if step.verdict is Verdict.fail:
                    assert called.error is not None
                    failure = failure_of(tier.name, called.error)
                    raise CascadeFailed(failure.status, failure.message, body=failure.body)
                escalation = _Escalation(tier, called)
            raise AssertionError("the last tier always answers or fails")  # pragma: no cover
        finally:
            if not handed_over:  # failed, refused, or cancelled because the client went away
                if slot is not None:
                    slot.release()
                if escalation is not None:
                    await escalation.called.set_aside(attempts)
                self._record(attempts, None, escalated=len(attempts.calls) > 1)

    async def _admit(self, tier: Tier, escalation: _Escalation | None, attempts: Attempts) -> Slot | None:
        """A slot at `tier` (`admission`); None: keep the declined answer. A refusal (429, 503) is a CascadeFailed.

        A declined stream is closed before the request waits for the next tier, or once it is admitted there
        (keepSmall, which never waits, may return it).
        """
        keepable = escalation is not None and escalation.called.decision is not None
        if escalation is not None and not (keepable and self.admission.keeps_small):
            await escalation.called.set_aside(attempts)
        slot = await self.admission.admit(
            tier.name, escalated_from=escalation.tier.name if escalation else None, keepable=keepable
        )
        if slot is not None and escalation is not None:
            await escalation.called.set_aside(attempts)
        return slot

    def _note_step(self, tier: Tier, endpoint: Endpoint, step: Step, called: Called, attempts: Attempts) -> None:
        """Every decided step passes here: the score joins the tier's call, for the trail and the ledger.

        The hook for what watches the decisions (escalation log, shadow
        samples): a declined answer waits on the attempts until a later tier answers.
        """
        if called.decision is not None:
            attempts.set_last_confidence(called.decision.confidence)
            if self._watch is not None and step.verdict is Verdict.escalate:
                buffered = called.stream.buffered if called.stream is not None else None
                self._watch.declined(attempts, tier.config, endpoint, called.decision, called.response, buffered)

    # -- handing an answer over --------------------------------------------------------------

    def _complete_answer(
        self,
        tier: Tier,
        endpoint: Endpoint,
        body: dict[str, Any],
        called: Called,
        attempts: Attempts,
        escalated: bool,
        kept: bool,
    ) -> CompleteAnswer:
        assert called.response is not None
        self._record(attempts, tier.name, escalated=escalated)
        self._watch_answer(tier, endpoint, body, attempts, called.response, called.decision, kept)
        response = present(endpoint, body, tier.config.served_model, called.response)
        return CompleteAnswer(**_attribution(tier, called, attempts, escalated, kept), response=response)

    def _streaming_answer(
        self,
        tier: Tier,
        endpoint: Endpoint,
        body: dict[str, Any],
        called: Called,
        attempts: Attempts,
        escalated: bool,
        kept: bool,
    ) -> StreamingAnswer:
        """A tier's stream is relayed (accounted, and its slot given back, when it ends); a whole answer is
        accounted now and replayed."""
        if called.stream is not None:
            slot = called.slot

            def record(answered_by: str | None, seen: list[dict[str, Any]]) -> None:
                if slot is not None:
                    slot.release()
                self._record(attempts, answered_by, escalated=escalated)
                if answered_by is not None:
                    self._watch_answer(tier, endpoint, body, attempts, seen, called.decision, kept)

            chunks = relay(endpoint, body, tier.name, tier.config.served_model, called.stream, attempts, record)
            if slot is not None:  # a stream dropped before its first chunk was asked for never runs `record`
                weakref.finalize(chunks, slot.release)
        else:
            assert called.response is not None
            self._record(attempts, tier.name, escalated=escalated)
            self._watch_answer(tier, endpoint, body, attempts, called.response, called.decision, kept)
            presented = present(endpoint, body, tier.config.served_model, called.response)
            chunks = replay_as_chunks(endpoint, body, presented)
        return StreamingAnswer(**_attribution(tier, called, attempts, escalated, kept), chunks=chunks)

    # -- calling a tier ----------------------------------------------------------------------

    def _call_whole(
        self, tier: Tier, endpoint: Endpoint, body: dict[str, Any], attempts: Attempts
    ) -> Awaitable[Called]:
        # Not async itself: one coroutine less per tier call on the hot path.
        return self._whole_answer(tier, endpoint, self._tier_body(tier, endpoint, body), attempts)

    async def _call_for_stream(
        self, tier: Tier, endpoint: Endpoint, body: dict[str, Any], attempts: Attempts
    ) -> Called:
        """The last tier and early mode stream; buffer mode asks a tier other than the last for a whole answer."""
        if tier.is_last or self.config.streaming.mode is StreamingMode.early:
            return await self._call_streamed(tier, endpoint, body, attempts)
        tier_body = self._tier_body(tier, endpoint, body, {"stream": False})
        tier_body.pop("stream_options", None)
        return await self._whole_answer(tier, endpoint, tier_body, attempts)

    async def _whole_answer(
        self, tier: Tier, endpoint: Endpoint, tier_body: dict[str, Any], attempts: Attempts
    ) -> Called:
        try:
            response = await call_whole(self._budget, tier.config, tier.engine, endpoint, tier_body, attempts)
        except TierError as error:
            return Called(error=error)
        if tier.is_last:
            return Called(response=response)
        assert tier.config.accept is not None
        return Called(response=response, decision=judge(tier.config.accept, endpoint, response, tier_body))

    async def _call_streamed(self, tier: Tier, endpoint: Endpoint, body: dict[str, Any], attempts: Attempts) -> Called:
        """Open the tier's stream; a tier other than the last is scored on its first N tokens (early mode)."""
        tier_body = self._tier_body(tier, endpoint, body, streaming_overrides(body))
        try:
            chunks, first = await open_stream(self._budget, tier.config, tier.engine, endpoint, tier_body, attempts)
        except TierError as error:
            return Called(error=error)
        if tier.is_last:
            return Called(stream=OpenStream(buffered=[first], rest=chunks))
        assert tier.config.accept is not None
        early_tokens = self.config.streaming.early_tokens
        try:
            decision, opened = await score_prefix(tier.config.accept, endpoint, chunks, first, early_tokens, tier_body)
        except TierError as error:
            attempts.mark_last_failed()
            return Called(error=error)
        return Called(decision=decision, stream=opened)

    def _tier_body(
        self, tier: Tier, endpoint: Endpoint, body: dict[str, Any], overrides: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The caller's body as this tier gets it: its served model, and logprobs to score if it is scored."""
        served = tier.config.served_model
        tier_body = {**body, **overrides, "model": served} if overrides else {**body, "model": served}
        if tier.is_last:
            return tier_body if self._watch is None else self._watch.last_tier_body(endpoint, tier_body)
        assert tier.config.accept is not None
        return with_logprobs_requested(endpoint, tier_body, required_top_logprobs(tier.config.accept.method))

    def _watch_answer(
        self,
        tier: Tier,
        endpoint: Endpoint,
        body: dict[str, Any],
        attempts: Attempts,
        answer: Any,
        decision: Decision | None,
        kept: bool,
    ) -> None:
        """`answer`: the answering tier's whole response, or every chunk of its stream.

        A declined answer kept under load is neither teacher data nor a shadow sample (whose call would load the
        tier that was full).
        """
        if self._pre_routing is not None:
            self._pre_routing.answered(tier.config, endpoint, attempts, answer)
        if self._watch is not None and not kept:
            self._watch.answered(tier.config, endpoint, body, answer, attempts, decision)

    def _record(self, attempts: Attempts, answered_by: str | None, *, escalated: bool) -> None:
        note_replica_absences(attempts, self.ledger, self.metrics)
        outcome = attempts.outcome(answered_by, escalated=escalated)
        if answered_by is None and self._pre_routing is not None:
            self._pre_routing.unanswered(attempts)
        cost = self.ledger.record(outcome)
        if self.metrics is not None:
            self.metrics.observe(outcome, cost)


def _attribution(tier: Tier, called: Called, attempts: Attempts, escalated: bool, kept: bool) -> dict[str, Any]:
    """Who answered and how sure it was: the fields every answer carries, complete or streamed."""
    return {
        "tier": tier.name,
        "served_model": tier.config.served_model,
        "confidence": called.confidence,
        "escalated": escalated,
        "trail": attempts.trail(),
        "kept_under_load": kept,
    }
