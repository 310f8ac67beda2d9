"""A tier scaled to zero: the router skips it (a tier before the last) or waits for it (the last), and counts both.

The signal is a connection that cannot be made (`TierError.no_connection`),
what a Service with no ready endpoint gives; the real HTTP engine sets it on a
refused connection. The tier loop runs on in-memory engines here.
"""

from __future__ import annotations

import asyncio
import math
import socket
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kascade.api.modelcascade import Accept, ModelCascade, OnTierError
from kascade.runtime import tier_call
from kascade.runtime.attempts import Attempts
from kascade.runtime.cascade import Cascade, CascadeFailed
from kascade.runtime.config import RouterConfig, TierConfig, router_config_from_cascade
from kascade.runtime.engines.base import Endpoint, TierError, TierErrorKind
from kascade.runtime.engines.http import HttpEngine
from kascade.runtime.ledger import Ledger, TierCall
from kascade.runtime.metrics import RouterMetrics
from kascade.runtime.pre_routing import PassedOver
from kascade.runtime.replica_absence import POLL_SECONDS, ReplicaAbsence

ASK = {"model": "demo", "messages": [{"role": "user", "content": "Hi"}]}
REFUSED = TierError(TierErrorKind.unavailable, "unreachable: connection refused", no_connection=True)


class Tier:
    """Answers with confidence `prob`; refuses the connection its first `refusals` times (no replica yet)."""

    def __init__(self, prob: float = 0.9, *, refusals: int = 0, fail: TierError | None = None) -> None:
        self.prob, self.refusals, self.fail = prob, refusals, fail
        self.calls = 0

    async def call(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        if self.calls <= self.refusals:
            raise REFUSED
        token = {"token": "x", "logprob": math.log(self.prob), "top_logprobs": [{"token": "x", "logprob": -0.1}]}
        return {
            "id": "r",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "x"}, "logprobs": {"content": [token]}}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


class Clock:
    """The cascade's latency clock, moved only by the sleeps of the tier calls: a wait's length is exact, and the
    test does not wait it out."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0.0
        real_sleep = asyncio.sleep

        async def sleep(seconds: float) -> None:
            self.now += seconds
            await real_sleep(0)

        monkeypatch.setattr(tier_call.asyncio, "sleep", sleep)

    def __call__(self) -> float:
        return self.now


def cascade(
    small: Tier,
    large: Tier,
    *,
    skip: bool = True,
    wait: float | None = None,
    clock: Clock | None = None,
    **router: Any,
) -> tuple[Cascade, Ledger, RouterMetrics]:
    config = RouterConfig(
        cascade="demo",
        tiers=[
            TierConfig(name="small", served_model="s", accept=Accept(threshold=0.5), skip_without_replica=skip),
            TierConfig(name="large", served_model="l", cold_start_wait_seconds=wait),
        ],
        **{"retries": 1, "retry_backoff_seconds": 0.001, **router},
    )
    ledger = Ledger({tier.name: tier.price for tier in config.tiers})
    metrics = RouterMetrics(CollectorRegistry(), "demo", ["small", "large"])
    timing = {} if clock is None else {"latency_clock": clock}
    return Cascade(config, {"small": small, "large": large}, ledger, metrics, **timing), ledger, metrics


def test_a_tier_without_a_replica_is_skipped_at_once_and_counted_and_the_next_answers() -> None:
    small = Tier(refusals=10)
    runner, ledger, metrics = cascade(small, Tier())
    answer = asyncio.run(runner.answer(Endpoint.chat, ASK))
    assert (answer.tier, answer.escalated, answer.trail) == ("large", False, "small=skipped(no-replica),large")
    assert small.calls == 1  # no retry: a refused connection to a tier at zero is its state, not a blip
    slot = ledger.counter_slot()
    assert slot.skipped_no_replica == {"small": 1}
    assert slot.tiers["small"].calls == 0 and slot.tiers["small"].errors == 0  # nothing was called, nothing paid
    assert slot.escalations == 0
    assert metrics.skipped_no_replica.labels("demo", "small")._value.get() == 1


def test_the_trail_shows_each_skip_where_the_request_met_it() -> None:
    """Skips without a replica and pre-route skips interleave in the order the request skipped them."""
    first_at_zero = Attempts()
    first_at_zero.skip_without_replica("small")
    first_at_zero.passed_over.append(PassedOver("medium", 0.12345, position=0))
    first_at_zero.add(TierCall("large", 3, 1, 0.1, ok=True))
    assert first_at_zero.trail() == "small=skipped(no-replica),medium=skipped(0.1235),large"

    second_at_zero = Attempts()
    second_at_zero.passed_over.append(PassedOver("small", 0.5, position=0))
    second_at_zero.skip_without_replica("medium")
    second_at_zero.add(TierCall("large", 3, 1, 0.1, ok=True))
    assert second_at_zero.trail() == "small=skipped(0.5000),medium=skipped(no-replica),large"

    asked_then_gone = Attempts()
    asked_then_gone.add(TierCall("small", 3, 1, 0.1, ok=True, confidence=0.2))
    asked_then_gone.skip_without_replica("medium")
    asked_then_gone.add(TierCall("large", 3, 1, 0.1, ok=True))
    assert asked_then_gone.trail() == "small=0.2000,medium=skipped(no-replica),large"
    assert asked_then_gone.without_replica == ["medium"] and asked_then_gone.tiers_skipped == 1


def test_the_skip_holds_whatever_on_tier_error_says() -> None:
    runner, ledger, _ = cascade(Tier(refusals=10), Tier(), on_tier_error=OnTierError.fail)
    assert asyncio.run(runner.answer(Endpoint.chat, ASK)).tier == "large"
    assert ledger.counter_slot().skipped_no_replica == {"small": 1}


def test_a_tier_that_came_back_answers_again() -> None:
    small = Tier(refusals=1)
    runner, ledger, _ = cascade(small, Tier())
    assert asyncio.run(runner.answer(Endpoint.chat, ASK)).tier == "large"
    assert asyncio.run(runner.answer(Endpoint.chat, ASK)).tier == "small"
    assert ledger.counter_slot().skipped_no_replica == {"small": 1}


def test_a_tier_that_answers_badly_is_not_skipped_but_retried_and_escalated_as_before() -> None:
    small = Tier(fail=TierError(TierErrorKind.unavailable, "HTTP 503: overloaded", status=503))
    runner, ledger, _ = cascade(small, Tier())
    answer = asyncio.run(runner.answer(Endpoint.chat, ASK))
    assert (answer.tier, answer.trail) == ("large", "small=error,large")
    assert small.calls == 2  # the retry
    assert ledger.counter_slot().skipped_no_replica == {}


def test_a_refused_tier_that_does_not_scale_to_zero_is_retried_as_before() -> None:
    small = Tier(refusals=10)
    runner, ledger, _ = cascade(small, Tier(), skip=False)
    assert asyncio.run(runner.answer(Endpoint.chat, ASK)).trail == "small=error,large"
    assert small.calls == 2 and ledger.counter_slot().skipped_no_replica == {}


def test_the_last_tier_at_zero_is_waited_for_within_its_cold_start_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    large = Tier(refusals=2)
    runner, ledger, _ = cascade(Tier(0.1), large, wait=5.0, clock=Clock(monkeypatch))
    runner_absence = ReplicaAbsence.of(runner.tiers[-1].config)
    assert runner_absence.wait_seconds == 5.0 and not runner_absence.skip
    answer = asyncio.run(runner.answer(Endpoint.chat, ASK))
    assert answer.tier == "large" and large.calls == 3
    slot = ledger.counter_slot()
    assert slot.cold_start_waits == {"large": 1}
    assert slot.cold_start_wait_seconds == pytest.approx(2 * POLL_SECONDS)  # two refusals, a poll after each
    assert slot.tiers["large"].errors == 0  # the refusals while waiting are no failed calls


def cold_start_waits(metrics: RouterMetrics, tier: str) -> tuple[float, float]:
    """(count, sum) of the tier's cold-start waits in the router's histogram."""
    (family,) = metrics.cold_start_wait.collect()
    values = {
        sample.name.removeprefix(family.name): sample.value
        for sample in family.samples
        if sample.labels["tier"] == tier
    }
    return values["_count"], values["_sum"]


def test_each_wait_for_the_last_tier_is_observed_in_the_cold_start_histogram(monkeypatch: pytest.MonkeyPatch) -> None:
    runner, _, metrics = cascade(Tier(0.1), Tier(refusals=2), wait=5.0, clock=Clock(monkeypatch))
    assert cold_start_waits(metrics, "large") == (0, 0)  # the series exists before the first wait
    answer = asyncio.run(runner.answer(Endpoint.chat, ASK))
    count, seconds = cold_start_waits(metrics, "large")
    assert count == 1 and seconds == pytest.approx(2 * POLL_SECONDS)
    assert answer.trail == "small=0.1000,large"  # waited for, then asked: no skip
    asyncio.run(runner.answer(Endpoint.chat, ASK))  # a replica answers at once: no wait
    assert cold_start_waits(metrics, "large")[0] == 1


def test_a_wait_past_the_cold_start_wait_fails_with_503(monkeypatch: pytest.MonkeyPatch) -> None:
    runner, ledger, _ = cascade(Tier(0.1), Tier(refusals=100), wait=0.6, clock=Clock(monkeypatch))
    with pytest.raises(CascadeFailed) as failed:
        asyncio.run(runner.answer(Endpoint.chat, ASK))
    assert failed.value.status == 503
    slot = ledger.counter_slot()
    assert slot.cold_start_waits == {"large": 1} and slot.cold_start_wait_seconds >= 0.6


def test_the_router_config_skips_a_tier_before_the_last_and_waits_for_the_last() -> None:
    cascade_ = ModelCascade.model_validate(
        {
            "metadata": {"name": "demo"},
            "spec": {
                "tiers": [
                    {
                        "name": "small",
                        "model": {"uri": "hf://org/small"},
                        "accept": {"threshold": 0.5},
                        "autoscaling": {"minReplicas": 0, "maxReplicas": 2, "targetPerReplica": 4},
                    },
                    {
                        "name": "large",
                        "model": {"uri": "hf://org/large"},
                        "autoscaling": {
                            "minReplicas": 0,
                            "maxReplicas": 2,
                            "targetPerReplica": 4,
                            "coldStartWaitSeconds": 90,
                        },
                    },
                ]
            },
        }
    )
    small, large = router_config_from_cascade(cascade_, tier_urls={}).tiers
    assert (small.skip_without_replica, small.cold_start_wait_seconds) == (True, None)
    assert (large.skip_without_replica, large.cold_start_wait_seconds) == (False, 90)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow  # opens a socket
def test_the_http_engine_says_a_refused_connection_found_no_one() -> None:
    engine = HttpEngine(f"http://127.0.0.1:{_closed_port()}/v1")

    async def call() -> TierError:
        try:
            with pytest.raises(TierError) as refused:
                await engine.call(Endpoint.chat, ASK)
            return refused.value
        finally:
            await engine.aclose()

    error = asyncio.run(call())
    assert error.kind is TierErrorKind.unavailable and error.no_connection
