"""Admission control on its own and in the tier loop: the gate's bounds, its queue and deadline, each policy.

In-memory engines held on an asyncio event, so which request holds which slot
is exact; no process, no socket. The router on loopback is in
`test_admission_router.py`.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kascade.api.admission import AdmissionOutcome, OnEscalationFull
from kascade.api.autoscaling import Autoscaling
from kascade.api.modelcascade import Accept, ModelCascade, StreamingMode
from kascade.api.pre_route import PreRoute
from kascade.runtime.admission import Admission, QueueFull, Refused, TierGate
from kascade.runtime.cascade import Cascade, CascadeFailed
from kascade.runtime.config import RouterConfig, TierConfig, router_config_from_cascade
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.ledger import Ledger
from kascade.runtime.metrics import RouterMetrics

ASK = {"model": "demo", "messages": [{"role": "user", "content": "Hi"}]}


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- the gate --------------------------------------------------------------------------------


@in_loop
async def test_a_gate_admits_up_to_its_bound_and_then_hands_slots_on_in_order() -> None:
    gate = TierGate(max_in_flight=2, max_queue=2)
    first, second = gate.try_enter(), gate.try_enter()
    assert first is not None and second is not None
    assert gate.try_enter() is None
    order: list[str] = []

    async def wait(name: str) -> None:
        slot = await gate.enter(timeout_seconds=5)
        order.append(name)
        slot.release()

    waiting = [asyncio.create_task(wait(name)) for name in ("a", "b")]
    await settle()
    assert (gate.in_flight, gate.queued) == (2, 2)
    assert gate.try_enter() is None  # a newcomer does not cut ahead of the queue, even when a slot frees
    first.release()
    first.release()  # a slot is given back once, however often it is released
    await asyncio.gather(*waiting)
    assert order == ["a", "b"]
    assert (gate.in_flight, gate.queued) == (1, 0)
    second.release()
    assert gate.in_flight == 0


@in_loop
async def test_a_full_queue_refuses_at_once_and_a_deadline_takes_the_waiter_out() -> None:
    gate = TierGate(max_in_flight=1, max_queue=1)
    held = gate.try_enter()
    assert held is not None
    queued = asyncio.create_task(gate.enter(timeout_seconds=0.05))
    await settle()
    with pytest.raises(QueueFull):
        await gate.enter(timeout_seconds=5)
    with pytest.raises(TimeoutError):
        await queued
    assert (gate.in_flight, gate.queued) == (1, 0)
    held.release()
    assert gate.in_flight == 0


@in_loop
async def test_a_waiter_that_goes_away_leaves_the_queue_and_a_slot_it_was_given_passes_on() -> None:
    gate = TierGate(max_in_flight=1, max_queue=2)
    held = gate.try_enter()
    assert held is not None
    leaving = asyncio.create_task(gate.enter(timeout_seconds=5))
    staying = asyncio.create_task(gate.enter(timeout_seconds=5))
    await settle()
    leaving.cancel()
    await settle()
    assert gate.queued == 1
    held.release()
    slot = await staying
    assert (gate.in_flight, gate.queued) == (1, 0)
    # Given a slot as it is cancelled: the slot goes to the next one, not lost.
    after = asyncio.create_task(gate.enter(timeout_seconds=5))
    last = asyncio.create_task(gate.enter(timeout_seconds=5))
    await settle()
    slot.release()  # `after` is handed the slot ...
    after.cancel()  # ... and goes away before it runs
    await asyncio.gather(after, return_exceptions=True)
    (await last).release()
    assert (gate.in_flight, gate.queued) == (0, 0)


@in_loop
async def test_a_waiter_whose_wait_ends_as_a_slot_frees_fails_with_its_own_error() -> None:
    gate = TierGate(max_in_flight=1, max_queue=1)
    held = gate.try_enter()
    assert held is not None
    waiting = asyncio.create_task(gate.enter(timeout_seconds=5))
    await settle()
    waiting.cancel()  # its wait ends (a deadline does the same) ...
    held.release()  # ... and the freed slot passes over it before it runs
    (outcome,) = await asyncio.gather(waiting, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)  # not a ValueError from a queue it has already left
    assert (gate.in_flight, gate.queued) == (0, 0)


@in_loop
async def test_retry_after_is_the_queue_ahead_at_the_recent_release_rate() -> None:
    now = [100.0]
    gate = TierGate(max_in_flight=1, max_queue=8, clock=lambda: now[0])
    assert gate.retry_after_seconds(unmeasured=7.5) == 8  # nothing released yet: the queue's deadline
    for _ in range(5):  # one release every 0.5 s
        slot = gate.try_enter()
        assert slot is not None
        now[0] += 0.5
        slot.release()
    now[0] += 0.5
    # 5 releases, the first 2.5 s ago: 2.5 s over 4 intervals = 0.625 s a slot; 1 slot ahead -> 1 s
    assert gate.retry_after_seconds(unmeasured=7.5) == 1
    held = gate.try_enter()
    waiters = [asyncio.create_task(gate.enter(timeout_seconds=60)) for _ in range(7)]
    await settle()
    assert gate.retry_after_seconds(unmeasured=7.5) == 5  # 7 queued: (7 + 1) x 0.625 s
    now[0] += 20  # a tier that stopped answering looks slower the longer it stays stopped
    assert gate.retry_after_seconds(unmeasured=7.5) == math.ceil(8 * 22.5 / 4)
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert held is not None and (gate.in_flight, gate.queued) == (1, 0)


def test_a_gate_needs_a_slot() -> None:
    with pytest.raises(ValueError):
        TierGate(max_in_flight=0, max_queue=1)


# -- the policy ------------------------------------------------------------------------------


class _Books:
    def __init__(self) -> None:
        self.noted: list[tuple[str, AdmissionOutcome]] = []

    def note_admission(self, tier: str, outcome: AdmissionOutcome) -> None:
        self.noted.append((tier, outcome))


def _admission(policy: OnEscalationFull, books: _Books) -> Admission:
    tiers = [
        TierConfig(name="small", served_model="s", accept=Accept(threshold=0.5), max_in_flight=1, max_queue=0),
        TierConfig(name="large", served_model="l", max_in_flight=1, max_queue=0),
    ]
    return Admission(tiers, queue_timeout_seconds=2.0, on_escalation_full=policy, ledger=books)


@in_loop
async def test_the_first_tier_refuses_with_429_and_an_escalation_with_the_policy() -> None:
    for policy, escalated_outcome in [
        (OnEscalationFull.reject, AdmissionOutcome.rejected_at_escalation),
        (OnEscalationFull.wait, AdmissionOutcome.rejected_at_escalation),
        (OnEscalationFull.keep_small, AdmissionOutcome.kept_under_load),
    ]:
        books = _Books()
        admission = _admission(policy, books)
        assert await admission.admit("small", escalated_from=None) is not None
        assert await admission.admit("large", escalated_from=None) is not None
        with pytest.raises(Refused) as first:
            await admission.admit("small", escalated_from=None)
        assert first.value.status == 429
        assert first.value.headers == {"Retry-After": "2"}  # nothing released yet: the 2 s deadline
        assert first.value.body["error"]["type"] == "RateLimitError"
        assert "tier 'small' is at capacity" in first.value.body["error"]["message"]
        if policy is OnEscalationFull.keep_small:
            assert await admission.admit("large", escalated_from="small", keepable=True) is None
            with pytest.raises(Refused):  # a failed call leaves no answer to keep
                await admission.admit("large", escalated_from="small", keepable=False)
        else:
            with pytest.raises(Refused) as escalated:
                await admission.admit("large", escalated_from="small", keepable=True)
            assert escalated.value.status == 503
            assert escalated.value.body["error"]["type"] == "ServiceUnavailableError"
            assert "onEscalationFull: keepSmall" in escalated.value.message
        admitted = [(tier, AdmissionOutcome.admitted) for tier in ("small", "large")]
        assert books.noted[:3] == [*admitted, ("small", AdmissionOutcome.rejected)]
        assert books.noted[3] == ("large", escalated_outcome)


# -- in the tier loop ------------------------------------------------------------------------


class HeldEngine:
    """Answers with tokens of probability `prob`, each answer held until `gate` is set (when given)."""

    def __init__(self, prob: float, *, gate: asyncio.Event | None = None) -> None:
        self.prob, self.gate = prob, gate
        self.calls = 0

    def _token(self) -> dict[str, Any]:
        logprob = math.log(self.prob)
        return {"token": "x", "logprob": logprob, "top_logprobs": [{"token": "x", "logprob": logprob}]}

    async def call(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        message = {"role": "assistant", "content": f"{self.prob}"}
        return {
            "choices": [{"index": 0, "message": message, "logprobs": {"content": [self._token()] * 3}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3},
        }

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        for _ in range(3):
            delta = {"index": 0, "delta": {"content": "x"}, "logprobs": {"content": [self._token()]}}
            yield {"choices": [delta]}

    async def ready(self) -> bool:
        return True


def _skip_every_prompt(dimensions: int = 16) -> PreRoute:
    """A pre-route score far below skipBelow for any prompt: every request goes straight to the next tier."""
    return PreRoute(
        dimensions=dimensions,
        weights=PreRoute.encode_weights([0.0] * dimensions),
        bias=-30.0,
        skip_below=0.5,
        probe_rate=0.0,
    )


class Loop:
    """A two-tier cascade over held engines, with one slot per tier and no queue unless told."""

    def __init__(self, policy: OnEscalationFull, *, small_prob: float = 0.2, **router: Any) -> None:
        self.release_large = asyncio.Event()
        self.small = HeldEngine(small_prob)
        self.large = HeldEngine(0.9, gate=self.release_large)
        pre_route = router.pop("pre_route", None)
        config = RouterConfig(
            cascade="demo",
            tiers=[
                TierConfig(
                    name="small", served_model="s", accept=Accept(threshold=0.5), pre_route=pre_route, max_in_flight=1
                ),
                TierConfig(name="large", served_model="l", max_in_flight=1, max_queue=router.pop("large_queue", 0)),
            ],
            on_escalation_full=policy,
            queue_timeout_seconds=router.pop("queue_timeout_seconds", 5.0),
            **router,
        )
        self.ledger = Ledger({tier.name: tier.price for tier in config.tiers})
        self.registry = CollectorRegistry()
        metrics = RouterMetrics(self.registry, "demo", ["small", "large"])
        self.cascade = Cascade(config, {"small": self.small, "large": self.large}, self.ledger, metrics)

    async def hold_the_large_tier(self) -> asyncio.Task[Any]:
        """A request escalated to the large tier, whose answer is held: the large tier's one slot is taken."""
        holding = asyncio.create_task(self.cascade.answer(Endpoint.chat, ASK))
        while self.large.calls == 0:
            await asyncio.sleep(0)
        return holding

    def gauge(self, name: str, tier: str) -> float | None:
        return self.registry.get_sample_value(name, {"cascade": "demo", "tier": tier})


@in_loop
async def test_keep_small_answers_with_the_declined_answer_marked_and_counted() -> None:
    loop = Loop(OnEscalationFull.keep_small)
    holding = await loop.hold_the_large_tier()
    assert loop.gauge("kascade_tier_in_flight", "large") == 1
    kept = await loop.cascade.answer(Endpoint.chat, ASK)
    assert (kept.tier, kept.kept_under_load, kept.escalated) == ("small", True, False)
    assert kept.response["choices"][0]["message"]["content"] == "0.2"
    loop.release_large.set()
    held = await holding
    assert (held.tier, held.kept_under_load) == ("large", False)
    slot = loop.ledger.counter_slot()
    assert slot.kept_under_load == {"large": 1}
    assert slot.admitted == {"small": 2, "large": 1}
    assert slot.answered_by == {"small": 1, "large": 1}
    assert slot.escalations == 1  # the kept answer was not passed on
    assert loop.large.calls == 1
    assert loop.gauge("kascade_tier_in_flight", "small") == 0
    assert loop.gauge("kascade_tier_in_flight", "large") == 0


@pytest.mark.parametrize("mode", [StreamingMode.buffer, StreamingMode.early])
def test_keep_small_streams_the_declined_answer_and_then_frees_its_slot(mode: StreamingMode) -> None:
    async def run() -> None:
        loop = Loop(OnEscalationFull.keep_small, streaming={"mode": mode, "early_tokens": 2})
        holding = await loop.hold_the_large_tier()
        kept = await loop.cascade.answer_streaming(Endpoint.chat, {**ASK, "stream": True})
        assert (kept.tier, kept.kept_under_load) == ("small", True)
        chunks = [chunk async for chunk in kept.chunks]
        assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"])
        assert loop.gauge("kascade_tier_in_flight", "small") == 0
        loop.release_large.set()
        await holding
        assert loop.ledger.counter_slot().kept_under_load == {"large": 1}

    asyncio.run(run())


@in_loop
async def test_reject_fails_the_escalation_with_503_at_once() -> None:
    loop = Loop(OnEscalationFull.reject)
    holding = await loop.hold_the_large_tier()
    with pytest.raises(CascadeFailed) as refused:
        await loop.cascade.answer(Endpoint.chat, ASK)
    assert refused.value.status == 503
    assert refused.value.headers is not None and int(refused.value.headers["Retry-After"]) >= 1
    loop.release_large.set()
    await holding
    slot = loop.ledger.counter_slot()
    assert slot.rejected_at_escalation == {"large": 1}
    assert (slot.failed, slot.requests) == (1, 2)
    assert loop.large.calls == 1


@in_loop
async def test_wait_queues_for_the_next_tier_and_gets_its_answer_when_a_slot_frees() -> None:
    loop = Loop(OnEscalationFull.wait, large_queue=1)
    holding = await loop.hold_the_large_tier()
    waiting = asyncio.create_task(loop.cascade.answer(Endpoint.chat, ASK))
    await settle()
    assert loop.gauge("kascade_tier_queued", "large") == 1
    loop.release_large.set()
    assert (await waiting).tier == "large"
    await holding
    assert loop.ledger.counter_slot().admitted == {"small": 2, "large": 2}


@in_loop
async def test_wait_gives_503_when_the_deadline_passes_and_never_waits_longer() -> None:
    loop = Loop(OnEscalationFull.wait, large_queue=1, queue_timeout_seconds=0.05)
    holding = await loop.hold_the_large_tier()
    with pytest.raises(CascadeFailed) as refused:
        await loop.cascade.answer(Endpoint.chat, ASK)
    assert refused.value.status == 503
    assert "waited 0.05 s for a slot" in refused.value.message
    assert loop.gauge("kascade_tier_queued", "large") == 0
    loop.release_large.set()
    await holding


@in_loop
async def test_a_request_pre_routed_to_the_last_tier_is_refused_there_with_429() -> None:
    loop = Loop(OnEscalationFull.keep_small, pre_route=_skip_every_prompt())
    holding = await loop.hold_the_large_tier()
    with pytest.raises(CascadeFailed) as refused:
        await loop.cascade.answer(Endpoint.chat, ASK)
    assert refused.value.status == 429  # its first tier asked, so no policy applies: nothing in hand to keep
    assert loop.small.calls == 0
    loop.release_large.set()
    await holding
    assert loop.ledger.counter_slot().rejected == {"large": 1}


@in_loop
async def test_a_client_that_goes_away_gives_its_slot_back() -> None:
    loop = Loop(OnEscalationFull.wait, large_queue=1)
    holding = await loop.hold_the_large_tier()
    queued = asyncio.create_task(loop.cascade.answer(Endpoint.chat, ASK))
    await settle()
    holding.cancel()  # the holder's client leaves while the large tier answers
    queued.cancel()
    await asyncio.gather(holding, queued, return_exceptions=True)
    assert loop.gauge("kascade_tier_in_flight", "large") == 0
    assert loop.gauge("kascade_tier_queued", "large") == 0


# -- the spec's bounds -----------------------------------------------------------------------


def _cascade(**router_and_tier: Any) -> ModelCascade:
    admission = router_and_tier.get("admission", {})
    return ModelCascade.model_validate(
        {
            "metadata": {"name": "demo"},
            "spec": {
                "router": {"admission": admission},
                "tiers": [
                    {
                        "name": "small",
                        "model": {"uri": "hf://org/small"},
                        "engine": "transformers",
                        "replicas": 3,
                        "accept": {"threshold": 0.5},
                    },
                    {"name": "large", "model": {"uri": "hf://org/large"}, **router_and_tier.get("large", {})},
                ],
            },
        }
    )


def test_the_router_config_carries_each_tiers_bounds_and_the_policy() -> None:
    config = router_config_from_cascade(_cascade(), {"small": None, "large": None})
    small, large = config.tiers
    assert (small.max_in_flight, small.max_queue) == (6, 128)  # engine transformers: 2 per replica
    assert (large.max_in_flight, large.max_queue) == (64, 128)
    assert (config.queue_timeout_seconds, config.on_escalation_full) == (10.0, OnEscalationFull.wait)

    spec = _cascade(
        admission={
            "maxInFlightPerTier": 8,
            "maxQueuePerTier": 4,
            "queueTimeoutSeconds": 2.5,
            "onEscalationFull": "keepSmall",
        },
        large={"admission": {"maxInFlight": 3, "maxQueue": 0}},
    )
    config = router_config_from_cascade(spec, {"small": None, "large": None})
    small, large = config.tiers
    assert (small.max_in_flight, small.max_queue) == (6, 4)
    assert (large.max_in_flight, large.max_queue) == (3, 0)
    assert (config.queue_timeout_seconds, config.on_escalation_full) == (2.5, OnEscalationFull.keep_small)


def test_an_autoscaled_tier_is_bounded_by_what_its_most_replicas_serve() -> None:
    spec = _cascade()
    small = spec.spec.tiers[0].model_copy(
        update={"autoscaling": Autoscaling(min_replicas=0, max_replicas=5, target_per_replica=2)}
    )
    spec.spec.tiers[0] = small
    (config_small, _) = router_config_from_cascade(spec, {"small": None, "large": None}).tiers
    assert config_small.max_in_flight == 10  # engine transformers: 2 per replica, at maxReplicas, not at `replicas`


def test_the_routers_bounds_reach_every_tier_without_its_own() -> None:
    spec = _cascade(admission={"maxInFlightPerTier": 8, "maxQueuePerTier": 4})
    small, large = router_config_from_cascade(spec, {"small": None, "large": None}).tiers
    assert (large.max_in_flight, large.max_queue) == (8, 4)  # the router's, for a tier that names none
    assert (small.max_in_flight, small.max_queue) == (6, 4)  # engine transformers: its own in-flight default
