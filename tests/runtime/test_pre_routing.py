"""Pre-routing in the tier loop: a tier skipped on its pre-route score, counted, shown, and probed off the path.

In-memory engines answer by the prompt, so which tier is asked, what is paid
and what the loop samples can be read off exactly; no process, no socket.
"""

from __future__ import annotations

import asyncio
import functools
import math
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kascade.api.agreement import AnswerMatcher
from kascade.api.modelcascade import Accept, Price
from kascade.api.pre_route import PreRoute
from kascade.calibration.online import bin_key
from kascade.runtime.answer_watch import AnswerWatch
from kascade.runtime.cascade import Cascade, CascadeFailed
from kascade.runtime.config import RouterConfig, ShadowSamplingConfig, TierConfig
from kascade.runtime.engines.base import Endpoint, TierError, TierErrorKind
from kascade.runtime.ledger import Ledger
from kascade.runtime.metrics import RouterMetrics
from kascade.runtime.online.agreement import TextMatch
from kascade.runtime.online.shadow_sampling import ShadowSampler
from kascade.runtime.scoring.pre_route import PreRouteScorer

Answers = Callable[[str], tuple[str, float]]  # the prompt's text -> (answer, each token's probability)


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test in an event loop of its own."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


def ask(prompt: str) -> dict[str, Any]:
    return {"model": "demo", "messages": [{"role": "user", "content": prompt}]}


def skipping(word: str, *, dimensions: int = 4096, probe_rate: float = 0.0, skip_below: float = 0.5) -> PreRoute:
    """A pre-route score that keeps every prompt (p ~ 0.95) but those with `word` (p < 0.001)."""
    weights = [0.0] * dimensions
    weights[zlib.crc32(f"w:{word}".encode()) % dimensions] = -60.0
    return PreRoute(
        dimensions=dimensions,
        weights=PreRoute.encode_weights(weights),
        bias=3.0,
        skip_below=skip_below,
        probe_rate=probe_rate,
    )


def _tokens(text: str, prob: float) -> list[dict[str, Any]]:
    logprob = math.log(prob)
    return [{"token": char, "logprob": logprob, "top_logprobs": [{"token": char, "logprob": logprob}]} for char in text]


class PromptEngine:
    """Answers each prompt as `answers` says; `gate` (when given) holds every answer until it is set."""

    def __init__(self, answers: Answers, *, gate: asyncio.Event | None = None, fail: bool = False) -> None:
        self.answers, self.gate, self.fail = answers, gate, fail
        self.asked: list[str] = []

    async def call(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["messages"][-1]["content"]
        self.asked.append(prompt)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise TierError(TierErrorKind.unavailable, "down")
        text, prob = self.answers(prompt)
        message = {"role": "assistant", "content": text}
        return {
            "id": "r",
            "choices": [{"index": 0, "message": message, "logprobs": {"content": _tokens(text, prob)}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": len(text)},
        }

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        prompt = body["messages"][-1]["content"]
        self.asked.append(prompt)
        text, _ = self.answers(prompt)
        for char in text:
            yield {"choices": [{"index": 0, "delta": {"content": char}, "finish_reason": None}]}
        yield {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": len(text)}}

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


def config(pre_route: PreRoute | None, *, threshold: float = 0.5, rate: float | None = None) -> RouterConfig:
    return RouterConfig(
        cascade="demo",
        tiers=[
            TierConfig(
                name="small",
                served_model="small-model",
                accept=Accept(method="geometricMean", threshold=threshold),
                price=Price(input_per_million=1.0, output_per_million=2.0),
                pre_route=pre_route,
            ),
            TierConfig(name="large", served_model="large-model", price=Price(input_per_million=10.0)),
        ],
        shadow_sampling=ShadowSamplingConfig(rate=rate, matcher=AnswerMatcher.exact) if rate is not None else None,
    )


class Router:
    """A cascade over two prompt engines, its ledger and metrics, and (with a rate) online calibration's sampler."""

    def __init__(
        self,
        router_config: RouterConfig,
        small: PromptEngine,
        large: PromptEngine,
        *,
        draw: Callable[[], float] | None = None,
    ) -> None:
        self.small, self.large = small, large
        self.ledger = Ledger({tier.name: tier.price for tier in router_config.tiers})
        self.registry = CollectorRegistry()
        self.metrics = RouterMetrics(self.registry, "demo", ["small", "large"])
        watch = None
        if router_config.shadow_sampling is not None:
            last = router_config.tiers[-1]
            sampler = ShadowSampler(
                router_config.shadow_sampling,
                self.ledger,
                last_tier=last,
                engine=large,
                judge=TextMatch(AnswerMatcher.exact),
                timeout_seconds=5.0,
                **({"draw": draw} if draw is not None else {}),
            )
            watch = AnswerWatch(None, sampler, last)
        self.cascade = Cascade(router_config, {"small": small, "large": large}, self.ledger, self.metrics, watch=watch)
        if draw is not None and self.cascade._pre_routing is not None:
            self.cascade._pre_routing._draw = draw  # the probes draw from the same per-request sequence

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"cascade": "demo", **labels}) or 0.0


async def settle() -> None:
    """Let the background tasks (probes, shadow calls, judging) of in-memory engines run to their end."""
    for _ in range(20):
        await asyncio.sleep(0)


def fixed(text: str, prob: float) -> Answers:
    return lambda prompt: (text, prob)


# -- skipping --------------------------------------------------------------------------------


def test_the_score_skips_only_the_prompts_it_was_made_to() -> None:
    scorer = PreRouteScorer(skipping("hard"))
    assert scorer.skips(scorer.probability(ask("a hard question")))
    assert not scorer.skips(scorer.probability(ask("an easy question")))
    assert scorer.probability(ask("an easy question")) > 0.9


@in_loop
async def test_a_skipped_tier_is_never_asked_and_the_last_tier_answers() -> None:
    router = Router(config(skipping("hard")), PromptEngine(fixed("small", 0.9)), PromptEngine(fixed("large", 0.9)))
    answer = await router.cascade.answer(Endpoint.chat, ask("a hard question"))
    assert answer.tier == "large"
    assert answer.escalated is False  # routed past, not escalated
    assert answer.trail.startswith("small=skipped(0.0") and answer.trail.endswith(",large")
    assert router.small.asked == []
    slot = router.ledger.counter_slot()
    assert slot.routed_past == {"small": 1}
    assert slot.escalations == 0 and slot.tiers["small"].calls == 0
    assert router.metric("kascade_routed_past_total", tier="small") == 1


@in_loop
async def test_a_kept_prompt_goes_through_the_tiers_as_before() -> None:
    router = Router(config(skipping("hard")), PromptEngine(fixed("small", 0.9)), PromptEngine(fixed("large", 0.9)))
    answer = await router.cascade.answer(Endpoint.chat, ask("an easy question"))
    assert (answer.tier, answer.trail) == ("small", "small=0.9000")
    assert router.ledger.counter_slot().routed_past == {}


@in_loop
async def test_a_skip_after_an_answered_call_saves_the_tiers_mean_call_cost() -> None:
    router = Router(config(skipping("hard")), PromptEngine(fixed("small", 0.9)), PromptEngine(fixed("large", 0.9)))
    await router.cascade.answer(Endpoint.chat, ask("an easy question"))
    small_call = router.ledger.counter_slot().tiers["small"].cost
    await router.cascade.answer(Endpoint.chat, ask("a hard question"))
    await router.cascade.answer(Endpoint.chat, ask("another hard question"))
    slot = router.ledger.counter_slot()
    assert slot.routed_past == {"small": 2}
    assert slot.routed_past_saved == pytest.approx(2 * small_call)
    assert slot.cost.actual == pytest.approx(small_call + slot.tiers["large"].cost)  # no small call paid


@in_loop
async def test_a_streamed_request_skips_the_tier_too() -> None:
    router = Router(config(skipping("hard")), PromptEngine(fixed("small", 0.9)), PromptEngine(fixed("large", 0.9)))
    answer = await router.cascade.answer_streaming(Endpoint.chat, {**ask("a hard question"), "stream": True})
    text = "".join(
        [chunk["choices"][0]["delta"].get("content", "") async for chunk in answer.chunks if chunk["choices"]]
    )
    assert (answer.tier, text, router.small.asked) == ("large", "large", [])
    assert answer.trail.startswith("small=skipped(")


# -- probes ------------------------------------------------------------------------------------


@in_loop
async def test_a_probe_asks_the_skipped_tier_off_the_response_path_and_pays_for_it() -> None:
    gate = asyncio.Event()
    small = PromptEngine(fixed("small", 0.9), gate=gate)
    router = Router(config(skipping("hard", probe_rate=1.0)), small, PromptEngine(fixed("large", 0.9)))
    answer = await router.cascade.answer(Endpoint.chat, ask("a hard question"))
    assert answer.tier == "large"  # answered while the probe is still held at the gate
    await settle()
    assert small.asked == ["a hard question"]
    assert router.ledger.counter_slot().probe_calls == 0
    gate.set()
    await settle()
    slot = router.ledger.counter_slot()
    assert (slot.probe_calls, slot.tiers["small"].calls) == (1, 1)
    assert slot.probe_cost == pytest.approx(slot.tiers["small"].cost) and slot.probe_cost > 0
    assert slot.cost.actual == pytest.approx(slot.tiers["large"].cost + slot.probe_cost)
    assert router.metric("kascade_probes_total", tier="small", outcome="kept") == 1
    assert slot.calibration_samples == {}  # no online calibration: the probe is not paired


@in_loop
async def test_probes_beyond_the_concurrency_bound_are_dropped_and_counted() -> None:
    gate = asyncio.Event()
    small = PromptEngine(fixed("small", 0.9), gate=gate)
    router = Router(config(skipping("hard", probe_rate=1.0)), small, PromptEngine(fixed("large", 0.9)))
    for index in range(6):
        await router.cascade.answer(Endpoint.chat, ask(f"hard question {index}"))
        await settle()
    assert router.metric("kascade_probes_total", tier="small", outcome="dropped") == 2  # 4 in flight at most
    gate.set()
    await settle()
    assert router.ledger.counter_slot().probe_calls == 4
    await router.cascade.close()


@in_loop
async def test_a_failed_probe_is_a_failed_call_of_the_tier_and_never_the_callers() -> None:
    small = PromptEngine(fixed("small", 0.9), fail=True)
    router = Router(config(skipping("hard", probe_rate=1.0)), small, PromptEngine(fixed("large", 0.9)))
    answer = await router.cascade.answer(Endpoint.chat, ask("a hard question"))
    await settle()
    slot = router.ledger.counter_slot()
    assert answer.tier == "large"
    assert (slot.probe_calls, slot.tiers["small"].errors, slot.probe_cost) == (1, 1, 0.0)
    assert router.metric("kascade_probes_total", tier="small", outcome="error") == 1


@in_loop
async def test_a_probe_drawn_for_calibration_adds_the_skipped_tiers_pair() -> None:
    router = Router(
        config(skipping("hard"), rate=1.0), PromptEngine(fixed("same", 0.8)), PromptEngine(fixed("same", 0.9))
    )
    await router.cascade.answer(Endpoint.chat, ask("a hard question"))
    await settle()
    slot = router.ledger.counter_slot()
    assert slot.probe_calls == 1  # probeRate 0, but every request is drawn for calibration at rate 1
    assert slot.calibration_samples == {bin_key("small", 0.8): 1}
    assert slot.calibration_agreed == {bin_key("small", 0.8): 1}


@in_loop
async def test_a_probe_of_a_failed_request_leaves_no_pair_and_is_counted() -> None:
    router = Router(
        config(skipping("hard"), rate=1.0),
        PromptEngine(fixed("same", 0.8)),
        PromptEngine(fixed("same", 0.9), fail=True),
    )
    with pytest.raises(CascadeFailed):
        await router.cascade.answer(Endpoint.chat, ask("a hard question"))
    await settle()
    slot = router.ledger.counter_slot()
    assert (slot.probe_calls, slot.calibration_samples) == (1, {})
    assert router.metric("kascade_probes_total", tier="small", outcome="unpaired") == 1
