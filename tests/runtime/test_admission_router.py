"""Admission control through the router on loopback: 429 and 503 with Retry-After, kept answers, readyz, retries.

Slow fixed-answer tiers hold their slots for as long as a test needs; a
request in a worker thread takes a slot, and the test's own request finds the
tier full.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from kascade.api.admission import OnEscalationFull
from kascade.runtime.ledger import Ledger

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "Say hello"}]}


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


def post(router: Any, body: dict[str, Any] | None = None, *, timeout: float = 30.0) -> httpx.Response:
    return httpx.post(f"{router.url}/v1/chat/completions", json=body or CHAT, timeout=timeout)


def hold(pool: ThreadPoolExecutor, router: Any, upstream: Any, *, requests: int = 1) -> Future[httpx.Response]:
    """Send a request from a worker thread and return once `upstream` has it: its slot is taken."""
    seen = upstream.behaviour.requests
    held = pool.submit(post, router)
    deadline = time.monotonic() + 10
    while upstream.behaviour.requests < seen + requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert upstream.behaviour.requests == seen + requests, "the held request never reached its tier"
    return held


def router_with(
    start_upstream: Callable[..., Any],
    start_router: Callable[..., Any],
    two_tier_config: Callable[..., Any],
    *,
    small: dict[str, Any],
    large: dict[str, Any] | None = None,
    limits: dict[str, tuple[int, int]],
    **router: Any,
) -> tuple[Any, Any, Any, Ledger]:
    """A two-tier router whose tiers take `limits[tier]` = (max_in_flight, max_queue); its ledger to read."""
    small_tier, large_tier = start_upstream(**small), start_upstream(**(large or {}))
    config = two_tier_config(small_tier.url, large_tier.url, **router)
    tiers = [
        tier.model_copy(update=dict(zip(("max_in_flight", "max_queue"), limits[tier.name], strict=True)))
        for tier in config.tiers
    ]
    config = config.model_copy(update={"tiers": tiers})
    ledger = Ledger({tier.name: tier.price for tier in config.tiers})
    return small_tier, large_tier, start_router(config, ledger=ledger), ledger


@pytest.mark.parametrize("stream", [False, True])
def test_a_full_first_tier_answers_429_with_retry_after_before_any_tier_is_called(
    start_upstream, start_router, two_tier_config, background, stream
):
    small, large, router, ledger = router_with(
        start_upstream,
        start_router,
        two_tier_config,
        small={"delay_seconds": 1.0},
        limits={"small": (1, 0), "large": (4, 4)},
    )
    held = hold(background, router, small)

    refused = post(router, {**CHAT, "stream": stream})

    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["content-type"].startswith("application/json")
    error = refused.json()["error"]
    assert error["type"] == "RateLimitError" and error["code"] == 429
    assert "tier 'small' is at capacity" in error["message"] and "Retry after" in error["message"]
    assert (small.behaviour.requests, large.behaviour.requests) == (1, 0)  # refused before any tier call
    assert held.result().status_code == 200
    slot = ledger.counter_slot()
    assert (slot.rejected, slot.admitted) == ({"small": 1}, {"small": 1})
    assert (slot.requests, slot.failed) == (2, 1)  # every request the clients sent, the refused one unanswered


def test_a_queued_request_waits_for_its_turn_and_past_its_deadline_gets_429(
    start_upstream, start_router, two_tier_config, background
):
    small, _, router, ledger = router_with(
        start_upstream,
        start_router,
        two_tier_config,
        small={"delay_seconds": 0.6},
        limits={"small": (1, 1), "large": (4, 4)},
        queue_timeout_seconds=5.0,
    )
    held = hold(background, router, small)
    assert post(router).status_code == 200  # queued behind the held request, then served
    assert held.result().status_code == 200

    small.behaviour.delay_seconds = 1.5
    held = hold(background, router, small)
    queued = background.submit(post, router)  # takes the one place in the queue
    time.sleep(0.2)
    refused = post(router)  # no room in the queue: refused at once
    assert refused.status_code == 429
    assert "1 calls in flight of maxInFlight 1, 1 queued of maxQueue 1" in refused.json()["error"]["message"]
    assert queued.result().status_code == 200
    assert held.result().status_code == 200
    assert ledger.counter_slot().rejected == {"small": 1}


def test_the_queue_deadline_refuses_a_request_that_waited_too_long(
    start_upstream, start_router, two_tier_config, background
):
    small, _, router, ledger = router_with(
        start_upstream,
        start_router,
        two_tier_config,
        small={"delay_seconds": 2.0},
        limits={"small": (1, 4), "large": (4, 4)},
        queue_timeout_seconds=0.2,
    )
    held = hold(background, router, small)
    refused = post(router)
    assert refused.status_code == 429
    assert "waited 0.2 s for a slot" in refused.json()["error"]["message"]
    assert small.behaviour.requests == 1
    assert held.result().status_code == 200
    assert ledger.counter_slot().rejected == {"small": 1}


@pytest.mark.parametrize("stream", [False, True])
def test_keep_small_returns_the_small_answer_marked_as_kept_under_load(
    start_upstream, start_router, two_tier_config, background, stream
):
    small, large, router, ledger = router_with(
        start_upstream,
        start_router,
        two_tier_config,
        small={"token_prob": 0.3, "tokens": ["Hm"]},
        large={"delay_seconds": 1.0, "tokens": ["Hello"]},
        limits={"small": (4, 4), "large": (1, 0)},
        on_escalation_full=OnEscalationFull.keep_small,
    )
    held = hold(background, router, large)

    kept = post(router, {**CHAT, "stream": stream})

    assert kept.status_code == 200
    assert kept.headers["x-kascade-kept-under-load"] == "true"
    assert kept.headers["x-kascade-tier"] == "small"
    assert "Hm" in kept.text
    assert large.behaviour.requests == 1
    answered = held.result()
    assert "x-kascade-kept-under-load" not in answered.headers
    assert answered.headers["x-kascade-tier"] == "large"
    slot = ledger.counter_slot()
    assert slot.kept_under_load == {"large": 1}
    assert slot.answered_by == {"small": 1, "large": 1}


@pytest.mark.parametrize("policy", [OnEscalationFull.reject, OnEscalationFull.wait])
def test_an_escalation_that_finds_the_last_tier_full_gets_503_with_retry_after(
    start_upstream, start_router, two_tier_config, background, policy
):
    small, large, router, ledger = router_with(
        start_upstream,
        start_router,
        two_tier_config,
        small={"token_prob": 0.3},
        large={"delay_seconds": 1.5},
        limits={"small": (4, 4), "large": (1, 1)},
        on_escalation_full=policy,
        queue_timeout_seconds=0.2,
    )
    held = hold(background, router, large)

    refused = post(router)

    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["type"] == "ServiceUnavailableError" and error["code"] == 503
    assert "tier 'large' is at capacity" in error["message"]
    assert ("waited 0.2 s" in error["message"]) == (policy is OnEscalationFull.wait)
    assert large.behaviour.requests == 1
    assert small.behaviour.requests == 2
    assert held.result().status_code == 200
    slot = ledger.counter_slot()
    assert slot.rejected_at_escalation == {"large": 1}
    assert slot.failed == 1


def test_readyz_answers_at_once_while_every_slot_and_the_queue_are_full(
    start_upstream, start_router, two_tier_config, background
):
    small, large, router, _ = router_with(
        start_upstream,
        start_router,
        two_tier_config,
        small={"delay_seconds": 2.0},
        limits={"small": (1, 1), "large": (1, 1)},
        queue_timeout_seconds=5.0,
    )
    held = hold(background, router, small)
    queued = background.submit(post, router)
    time.sleep(0.1)
    assert post(router).status_code == 429  # full: every slot taken, the queue too

    ready = httpx.get(f"{router.url}/readyz", timeout=1.0)  # a probe's own timeout is about a second

    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert httpx.get(f"{router.url}/healthz", timeout=1.0).status_code == 200
    assert held.result().status_code == 200
    assert queued.result().status_code == 200


def test_the_openai_clients_own_retry_honours_retry_after(start_upstream, start_router, two_tier_config, background):
    small, _, router, ledger = router_with(
        start_upstream,
        start_router,
        two_tier_config,
        small={"delay_seconds": 0.7},
        limits={"small": (1, 0), "large": (4, 4)},
        queue_timeout_seconds=1.0,  # no release measured yet: Retry-After is the queue's deadline, 1 s
    )
    # One retry: without Retry-After the client would wait at most 0.5 s (its own backoff), find the slot still
    # held (0.7 s) and give up with RateLimitError; waiting the 1 s the router asked for, it finds the slot free.
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=1)
    with pytest.raises(openai.RateLimitError) as refused:
        held = hold(background, router, small)
        openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0).chat.completions.create(**CHAT)
    assert refused.value.response.headers["retry-after"] == "1"
    held.result()

    held = hold(background, router, small)
    started = time.monotonic()
    completion = client.chat.completions.create(**CHAT)
    waited = time.monotonic() - started

    assert completion.choices[0].message.content == "Hello, world."
    assert waited >= 1.0  # it slept the header's second before its retry
    assert held.result().status_code == 200
    slot = ledger.counter_slot()
    assert slot.rejected == {"small": 2}
    assert slot.admitted == {"small": 3}


def test_metrics_export_each_tiers_load_and_what_requests_got(
    start_upstream, start_router, two_tier_config, background
):
    small, _, router, _ = router_with(
        start_upstream,
        start_router,
        two_tier_config,
        small={"delay_seconds": 1.5},
        limits={"small": (1, 1), "large": (4, 4)},
    )
    held = hold(background, router, small)
    queued = background.submit(post, router)
    time.sleep(0.2)
    assert post(router).status_code == 429

    metrics = httpx.get(f"{router.metrics_url}/metrics").text

    assert 'kascade_tier_in_flight{cascade="demo",tier="small"} 1.0' in metrics
    assert 'kascade_tier_queued{cascade="demo",tier="small"} 1.0' in metrics
    assert 'kascade_tier_in_flight{cascade="demo",tier="large"} 0.0' in metrics
    assert 'kascade_tier_admission_total{cascade="demo",outcome="rejected",tier="small"} 1.0' in metrics
    assert 'kascade_tier_admission_total{cascade="demo",outcome="kept_under_load",tier="large"} 0.0' in metrics
    assert held.result().status_code == 200 and queued.result().status_code == 200
    after = httpx.get(f"{router.metrics_url}/metrics").text
    assert 'kascade_tier_in_flight{cascade="demo",tier="small"} 0.0' in after
    assert 'kascade_tier_admission_total{cascade="demo",outcome="admitted",tier="small"} 2.0' in after
