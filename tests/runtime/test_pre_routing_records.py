"""A probe of a skipped tier leaves a record in the escalation log: the tier's decision, its draw, the teacher's answer.

The pre-routing is driven as the cascade drives it (`passes_over` before the
tier, `answered` or `unanswered` after the last one) over in-memory engines,
and its keeper hands what it keeps to a log that collects it; the records
built from it, their Parquet round trip and `kascade log` are tested in
tests/runtime/escalation/test_probe_records.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_pre_routing import PromptEngine, ask, config, fixed, in_loop, settle, skipping

from kascade.api.agreement import AnswerMatcher
from kascade.api.escalation_record import ModelIdentity, ProbeDraw, RecordKind
from kascade.api.pre_route import PreRoute
from kascade.runtime.answer_watch import AnswerWatch
from kascade.runtime.attempts import Attempts, usage_of
from kascade.runtime.cascade import Cascade
from kascade.runtime.config import EscalationLogConfig, RouterConfig
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.escalation.keeping import EscalationKeeper
from kascade.runtime.escalation.records import EscalationSeen
from kascade.runtime.ledger import Ledger, TierCall
from kascade.runtime.online.agreement import TextMatch
from kascade.runtime.online.shadow_sampling import ShadowSampler
from kascade.runtime.pre_routing import PreRouting

LARGE = ModelIdentity(tier="large", served_model="large-model")


class CollectingLog:
    """The keeper's log, reduced to what it was offered (the writer process is tested with the log itself)."""

    def __init__(self) -> None:
        self.config = EscalationLogConfig(uri="unused")
        self.offered: list[EscalationSeen] = []

    def offer(self, seen: EscalationSeen) -> bool:
        self.offered.append(seen)
        return True


class SkippingRouter:
    """Pre-routing over a small and a large prompt engine, with a log's keeper and (with a rate) a shadow sampler."""

    def __init__(
        self,
        pre_route: PreRoute,
        small: PromptEngine,
        large: PromptEngine,
        *,
        draws: list[float],
        rate: float | None = None,
        keep: bool = True,
    ) -> None:
        self.config: RouterConfig = config(pre_route, rate=rate)
        self.large = large
        self.ledger = Ledger({tier.name: tier.price for tier in self.config.tiers})
        self.log = CollectingLog()
        keeper = EscalationKeeper(self.log, "demo") if keep else None
        sampler = None
        if self.config.shadow_sampling is not None:
            sampler = ShadowSampler(
                self.config.shadow_sampling,
                self.ledger,
                last_tier=self.config.tiers[-1],
                engine=large,
                judge=TextMatch(AnswerMatcher.exact),
                timeout_seconds=5.0,
                keeper=keeper,
            )
        draw: Callable[[], float] = iter(draws).__next__
        routing = PreRouting.of(
            self.config, {"small": small, "large": large}, self.ledger, None, sampler, draw=draw, keeper=keeper
        )
        assert routing is not None
        self.routing = routing

    async def route_past(self, prompt: str, *, last_fails: bool = False) -> Attempts:
        """One request the small tier is skipped for, answered by the large tier as the cascade would."""
        small, large = self.config.tiers
        body = ask(prompt)
        attempts = Attempts()
        assert self.routing.passes_over(small, Endpoint.chat, body, attempts)
        if last_fails:
            self.routing.unanswered(attempts)
            return attempts
        response = await self.large.call(Endpoint.chat, {**body, "model": large.served_model})
        attempts.add(TierCall("large", *usage_of(response), 0.01, ok=True))
        self.routing.answered(large, Endpoint.chat, attempts, response)
        return attempts

    def probes(self) -> list[EscalationSeen]:
        return [seen for seen in self.log.offered if seen.kind is RecordKind.probe]


def _answers(small: float = 0.9) -> tuple[PromptEngine, PromptEngine]:
    return PromptEngine(fixed("Paris", small)), PromptEngine(fixed("Paris.", 0.9))


@in_loop
async def test_a_probe_for_the_record_keeps_the_tiers_decision_and_the_last_tiers_answer() -> None:
    small, large = _answers(small=0.9)
    router = SkippingRouter(skipping("hard", probe_rate=0.25), small, large, draws=[0.1])
    await router.route_past("a hard question")
    await settle()
    (seen,) = router.log.offered
    assert seen.kind is RecordKind.probe and seen.agreed is None
    assert seen.body == ask("a hard question")
    (probed,) = seen.declined
    assert probed.model.tier == "small" and probed.text == "Paris"
    assert probed.score == pytest.approx(0.9) and probed.threshold == 0.5
    assert seen.probe is not None and seen.probe.kept is True  # 0.9 >= 0.5: the tier would have kept it
    assert seen.probe.draw is ProbeDraw.record and seen.probe.rate == 0.25  # no calibration: all of probeRate
    assert seen.probe.keep_probability < 0.001  # the score that skipped it
    assert (seen.answered_by, seen.answer.text, seen.input_tokens, seen.output_tokens) == (LARGE, "Paris.", 10, 6)


@in_loop
async def test_a_probe_the_tier_would_have_declined_is_kept_as_declined() -> None:
    small, large = _answers(small=0.2)
    router = SkippingRouter(skipping("hard", probe_rate=1.0), small, large, draws=[0.5])
    await router.route_past("a hard question")
    await settle()
    (seen,) = router.probes()
    assert seen.probe is not None and seen.probe.kept is False and seen.declined[0].score == pytest.approx(0.2)


@in_loop
async def test_each_draw_is_named_with_the_share_of_skipped_requests_it_probes() -> None:
    small, large = PromptEngine(fixed("same", 0.8)), PromptEngine(fixed("same", 0.9))
    router = SkippingRouter(skipping("hard", probe_rate=0.8), small, large, draws=[0.2, 0.6, 0.9], rate=0.5)
    for index in range(3):
        await router.route_past(f"hard question {index}")
        await settle()
    calibration, record = router.probes()  # the third draw, 0.9, is past probeRate: not probed
    assert calibration.probe is not None and calibration.probe.draw is ProbeDraw.calibration
    assert calibration.probe.rate == 0.5 and calibration.agreed is True  # judged against the last tier's answer
    assert record.probe is not None and record.probe.draw is ProbeDraw.record
    assert record.probe.rate == pytest.approx(0.3) and record.agreed is None  # probeRate 0.8 minus the 0.5
    assert router.ledger.counter_slot().calibration_samples  # the calibration probe's pair was counted too


@in_loop
async def test_a_calibration_probe_that_disagrees_says_so_in_its_record() -> None:
    small, large = PromptEngine(fixed("Lyon", 0.8)), PromptEngine(fixed("Paris", 0.9))
    router = SkippingRouter(skipping("hard"), small, large, draws=[0.1], rate=0.5)
    await router.route_past("a hard question")
    await settle()
    (seen,) = router.probes()
    assert seen.agreed is False and seen.probe is not None and seen.probe.kept is True


@in_loop
async def test_a_probe_of_a_request_the_last_tier_did_not_answer_keeps_no_record() -> None:
    small, large = _answers()
    router = SkippingRouter(skipping("hard", probe_rate=1.0), small, large, draws=[0.1])
    await router.route_past("a hard question", last_fails=True)
    await settle()
    assert router.log.offered == []
    assert router.ledger.counter_slot().probe_calls == 1  # asked and paid all the same


@in_loop
async def test_without_a_log_a_probe_for_the_record_waits_for_no_answer() -> None:
    small, large = _answers()
    router = SkippingRouter(skipping("hard", probe_rate=1.0), small, large, draws=[0.1], keep=False)
    attempts = await router.route_past("a hard question")
    await settle()
    assert router.ledger.counter_slot().probe_calls == 1 and router.log.offered == []
    assert attempts.passed_over[0].reference is None  # the probe ended with its call: no answer was waited for


@in_loop
async def test_a_cascade_with_a_log_keeps_its_probes_whole_and_streamed() -> None:
    cfg = config(skipping("hard", probe_rate=1.0))
    small, large = _answers(small=0.9)
    ledger = Ledger({tier.name: tier.price for tier in cfg.tiers})
    log = CollectingLog()
    watch = AnswerWatch(EscalationKeeper(log, "demo"), None, cfg.tiers[-1])
    cascade = Cascade(cfg, {"small": small, "large": large}, ledger, watch=watch)
    await cascade.answer(Endpoint.chat, ask("a hard question"))
    streamed = await cascade.answer_streaming(Endpoint.chat, {**ask("another hard one"), "stream": True})
    async for _ in streamed.chunks:
        pass
    await cascade.answer(Endpoint.chat, ask("an easy question"))  # not skipped: no probe
    await settle()
    await cascade.close()
    probes = [seen for seen in log.offered if seen.kind is RecordKind.probe]
    assert [seen.body["messages"][0]["content"] for seen in probes] == ["a hard question", "another hard one"]
    assert all(seen.answered_by == LARGE and seen.answer.text for seen in probes)
