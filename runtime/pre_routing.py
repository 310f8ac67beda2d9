"""Pre-routing in the router: a tier passed over before it is asked, and the probes that keep the samples uniform.

Before a tier other than the last is called, its pre-route score
(`tiers[].preRoute`, `kascade.runtime.scoring.pre_route.PreRouteScorer`)
predicts from the request alone the probability that the tier keeps it; below
`skipBelow` the tier is passed over and the request goes to the next tier (the
last tier answers whatever reaches it, so quality cannot drop). The tier's
call, its tokens and its latency are saved. The ledger counts the request as
routed past the tier (`routedPast`) with what the skipped call would have cost
(`routedPastSaved`: the tier's mean cost per answered call so far, probes
included, `Ledger.note_routed_past`; an estimate, and 0 before the tier's
first answered call), and the trail header shows the tier as
`small=skipped(0.1234)`, its probability.

Probes keep what the loop learns uniform. A request routed past a tier leaves
it no (score, agreed) pair, so online calibration's samples would cover only
the prompts predicted keepable. One uniform draw u per skipped request decides:

- u < r, online calibration's `shadowSampleRate`: the request is drawn for
  calibration, as every other request is with probability r, and the skipped
  tier is probed; its (score, agreed) pair, its answer judged against the last
  tier's answer to the caller (`ShadowSampler.judge_pairs`), joins the
  samples. Skipped requests are thus drawn at rate r like all others, and the
  samples stay a uniform draw of the tier's traffic: the thresholds chosen
  with pre-routing on are those chosen without it.
- else u < `probeRate`: the tier is probed for the record (`probeRate` above r
  asks more; at or below r, exactly the calibration's draws are probed).

A probe is a background task, never awaited by the request, its answer never
shown: the tier is asked for a whole answer within the router's timeout, no
retries, at most `concurrency` probe calls in flight (beyond, the probe is
dropped and counted). It is paid and counted like a shadow call
(`Ledger.record_probe`: in the tier's calls and in `actual`, and apart as
`probeCalls`/`probeCost`), and `kascade_probes` counts each as kept or declined
by the tier's own threshold (the share of skipped requests the tier would have
kept: `maxKeptSkipped` measured online), error, dropped, or unpaired (drawn for
calibration, but the last tier gave no answer to compare with: the request
failed, or in a cascade of three or more tiers a middle tier answered it).

With an escalation log on, every probe whose request the last tier answered
is also kept there, as a `probe` record (`kascade.api.escalation_record.Probe`):
the request, the probed tier's answer with its score and decision (kept or
declined), the pre-route probability, the draw (`calibration` at rate r, with
its verdict as `agreed`; `record` at rate probeRate − r), and the last
tier's answer the caller got, with its teacher tokens. So the log holds the
tier's decisions on the requests it was routed past too, at a known rate:
what a distillation run's refit of the score needs to stay unbiased
(`kascade.distillation.pre_route_refit`), and teacher data like an escalation.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kascade.api.escalation_record import Probe, ProbeDraw
from kascade.runtime.attempts import usage_of
from kascade.runtime.escalation.records import AnswerSeen, answer_of, declined_seen, model_identity
from kascade.runtime.ledger import TierCall
from kascade.runtime.logprobs import with_logprobs_requested
from kascade.runtime.scoring.confidence import required_top_logprobs
from kascade.runtime.scoring.policy import judge
from kascade.runtime.scoring.pre_route import PreRouteScorer

if TYPE_CHECKING:
    from kascade.runtime.attempts import Attempts
    from kascade.runtime.config import RouterConfig, TierConfig
    from kascade.runtime.engines.base import Endpoint, Engine
    from kascade.runtime.escalation.keeping import EscalationKeeper
    from kascade.runtime.ledger import Ledger
    from kascade.runtime.metrics import RouterMetrics
    from kascade.runtime.online.shadow_sampling import ShadowSampler
    from kascade.runtime.scoring.policy import Decision

log = logging.getLogger("kascade.router.pre_routing")

DEFAULT_PROBE_CONCURRENCY = 4  # without online calibration; with it, its shadowConcurrency
REFERENCE_WAIT_TIMEOUTS = 10  # a probe waits at most this many router timeouts for the caller's answer


@dataclass(frozen=True, slots=True)
class LastAnswer:
    """The last tier's answer to a request that skipped a tier, and its (input, output) tokens."""

    answer: AnswerSeen
    tokens: tuple[int, int]


@dataclass(frozen=True, slots=True)
class ProbeDrawn:
    """Which draw a probe was made in, and the share of the tier's skipped requests that draw probes."""

    draw: ProbeDraw
    rate: float


@dataclass(slots=True)
class PassedOver:
    """A tier one request skipped: its predicted probability of keeping it, and where the trail shows it."""

    tier: str
    probability: float
    position: int  # calls the request had made when it skipped the tier
    reference: asyncio.Future[LastAnswer | None] | None = None  # for a probe that is paired or kept in the log


class PreRouting:
    """The tiers with a pre-route score: which a request passes over, and their probes.

    `engines` answer the probes; `sampler` (online calibration, if on) takes
    the probes' pairs; `keeper` (an escalation log, if on) keeps the probes'
    records; `draw` is the probe's uniform draw.
    """

    def __init__(
        self,
        tiers: Sequence[TierConfig],
        engines: Mapping[str, Engine],
        ledger: Ledger,
        *,
        timeout_seconds: float,
        metrics: RouterMetrics | None = None,
        sampler: ShadowSampler | None = None,
        keeper: EscalationKeeper | None = None,
        concurrency: int = DEFAULT_PROBE_CONCURRENCY,
        draw: Callable[[], float] = random.random,
        latency_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._scorers = {tier.name: PreRouteScorer(tier.pre_route) for tier in tiers[:-1] if tier.pre_route is not None}
        self._identities = {tier.name: model_identity(tier) for tier in tiers if tier.name in self._scorers}
        self._last_tier = tiers[-1].name
        self._last_identity = model_identity(tiers[-1])
        self._engines = engines
        self._ledger = ledger
        self._timeout_seconds = timeout_seconds
        self._metrics = metrics
        self._sampler = sampler
        self._keeper = keeper
        self._concurrency = concurrency
        self._draw = draw
        self._latency_clock = latency_clock
        self._calling = 0  # probe calls in flight
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def of(
        cls,
        config: RouterConfig,
        engines: Mapping[str, Engine],
        ledger: Ledger,
        metrics: RouterMetrics | None,
        sampler: ShadowSampler | None,
        draw: Callable[[], float] = random.random,
        *,
        keeper: EscalationKeeper | None = None,
    ) -> PreRouting | None:
        """The cascade's pre-routing; None when no tier has a pre-route score (nothing to do per request)."""
        if not any(tier.pre_route is not None for tier in config.tiers):
            return None
        sampling = config.shadow_sampling
        return cls(
            config.tiers,
            engines,
            ledger,
            timeout_seconds=config.timeout_seconds,
            metrics=metrics,
            sampler=sampler,
            keeper=keeper,
            concurrency=sampling.concurrency if sampling is not None else DEFAULT_PROBE_CONCURRENCY,
            draw=draw,
        )

    def passes_over(self, tier: TierConfig, endpoint: Endpoint, body: Mapping[str, Any], attempts: Attempts) -> bool:
        """Whether the request skips `tier`; when it does, it is counted, noted on `attempts`, perhaps probed."""
        scorer = self._scorers.get(tier.name)
        if scorer is None:
            return False
        probability = scorer.probability(body)
        if not scorer.skips(probability):
            return False
        self._ledger.note_routed_past(tier.name)
        if self._metrics is not None:
            self._metrics.observe_routed_past(tier.name)
        passed = PassedOver(tier.name, probability, len(attempts.calls))
        attempts.passed_over.append(passed)
        self._maybe_probe(scorer, tier, endpoint, body, passed)
        return True

    def answered(self, tier: TierConfig, endpoint: Endpoint, attempts: Attempts, answer: Any) -> None:
        """The caller got `tier`'s answer (a whole response or a stream's chunks): the probes' reference, if last."""
        waiting = [passed.reference for passed in attempts.passed_over if passed.reference is not None]
        if waiting:
            last = None
            if tier.name == self._last_tier:
                last = LastAnswer(answer_of(endpoint, answer), attempts.answering_tokens(tier.name))
            for reference in waiting:
                if not reference.done():
                    reference.set_result(last)

    def unanswered(self, attempts: Attempts) -> None:
        """The request failed: its probes drawn for calibration have nothing to be compared with."""
        for passed in attempts.passed_over:
            if passed.reference is not None and not passed.reference.done():
                passed.reference.set_result(None)

    async def close(self) -> None:
        """Stop: probes still in flight are cancelled (a sample lost; the callers were answered long ago)."""
        running = list(self._tasks)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    # -- probes ------------------------------------------------------------------------------

    def _maybe_probe(
        self,
        scorer: PreRouteScorer,
        tier: TierConfig,
        endpoint: Endpoint,
        body: Mapping[str, Any],
        passed: PassedOver,
    ) -> None:
        """Probe on the draw (see the module's docstring), within the concurrency bound."""
        draw = self._draw()
        calibration_rate = self._sampler.config.rate if self._sampler is not None else 0.0
        if draw < calibration_rate:
            drawn = ProbeDrawn(ProbeDraw.calibration, calibration_rate)
        elif draw < scorer.pre_route.probe_rate:
            drawn = ProbeDrawn(ProbeDraw.record, scorer.pre_route.probe_rate - calibration_rate)
        else:
            return
        if self._calling >= self._concurrency:
            self._observe(tier.name, "dropped")
            return
        loop = asyncio.get_running_loop()
        if drawn.draw is ProbeDraw.calibration or self._keeper is not None:
            passed.reference = loop.create_future()
        self._calling += 1
        task = loop.create_task(self._probe(tier, endpoint, dict(body), passed, drawn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(
        self, tier: TierConfig, endpoint: Endpoint, body: dict[str, Any], passed: PassedOver, drawn: ProbeDrawn
    ) -> None:
        """Ask the skipped tier; drawn for calibration, pair its answer with the last tier's; keep the record."""
        asked = await self._ask(tier, endpoint, body)
        if asked is None or passed.reference is None:
            return
        response, decision = asked
        try:
            async with asyncio.timeout(REFERENCE_WAIT_TIMEOUTS * self._timeout_seconds):
                last = await passed.reference
        except TimeoutError:
            last = None
        if last is None:
            if drawn.draw is ProbeDraw.calibration:
                self._observe(tier.name, "unpaired")
            return
        seen = declined_seen(self._identities[tier.name], decision, answer_of(endpoint, response))
        agreed = None
        if drawn.draw is ProbeDraw.calibration and self._sampler is not None:
            agreed = await self._sampler.judge_pairs(body, [seen], last.answer.text)
        if self._keeper is not None:
            probe = Probe(kept=decision.accept, keep_probability=passed.probability, draw=drawn.draw, rate=drawn.rate)
            self._keeper.keep(
                endpoint, body, [seen], self._last_identity, last.answer, last.tokens, agreed=agreed, probe=probe
            )

    async def _ask(
        self, tier: TierConfig, endpoint: Endpoint, body: dict[str, Any]
    ) -> tuple[dict[str, Any], Decision] | None:
        """The skipped tier's whole answer and its decision, paid and counted; None when the call failed."""
        tier_body = probe_body(tier, endpoint, body)
        started = self._latency_clock()
        try:
            async with asyncio.timeout(self._timeout_seconds):
                response = await self._engines[tier.name].call(endpoint, tier_body)
            assert tier.accept is not None
            decision = judge(tier.accept, endpoint, response, tier_body)
        except Exception as error:  # noqa: BLE001 - a probe that fails loses a sample, nothing else
            self._ledger.record_probe(TierCall(tier.name, 0, 0, self._latency_clock() - started, ok=False))
            self._observe(tier.name, "error")
            log.debug("a probe of tier %r failed: %s", tier.name, error)
            return None
        finally:
            self._calling -= 1
        latency = self._latency_clock() - started
        call = TierCall(tier.name, *usage_of(response), latency, ok=True, confidence=decision.confidence)
        self._ledger.record_probe(call)
        self._observe(tier.name, "kept" if decision.accept else "declined")
        return response, decision

    def _observe(self, tier: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.observe_probe(tier, outcome)


def probe_body(tier: TierConfig, endpoint: Endpoint, body: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's body as a probe asks it of the skipped tier: whole, its served model, the logprobs it is scored on."""
    whole = {key: value for key, value in body.items() if key not in ("stream", "stream_options")}
    whole["model"] = tier.served_model
    assert tier.accept is not None
    return with_logprobs_requested(endpoint, whole, required_top_logprobs(tier.accept.method))
