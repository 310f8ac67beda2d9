"""The router's Prometheus series, read back from a private registry."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kascade.api.modelcascade import Price
from kascade.runtime.ledger import Ledger, RequestCost, RequestOutcome, TierCall
from kascade.runtime.metrics import CONFIDENCE_BUCKETS, RouterMetrics

TIERS = ["small", "medium", "large"]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> RouterMetrics:
    return RouterMetrics(registry, "demo", TIERS)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"cascade": "demo", **labels})


def test_series_exist_at_zero_before_any_request(registry: CollectorRegistry, metrics: RouterMetrics) -> None:
    for answered_by in [*TIERS, "none"]:
        assert value(registry, "kascade_requests_total", answered_by=answered_by) == 0.0
    for tier in TIERS:
        assert value(registry, "kascade_tier_calls_total", tier=tier, outcome="ok") == 0.0
        assert value(registry, "kascade_tier_calls_total", tier=tier, outcome="error") == 0.0
        assert value(registry, "kascade_tier_latency_seconds_count", tier=tier) == 0.0
        assert value(registry, "kascade_confidence_count", tier=tier) == 0.0
        assert value(registry, "kascade_tokens_total", tier=tier, direction="input") == 0.0
        assert value(registry, "kascade_tokens_total", tier=tier, direction="output") == 0.0
    # the last tier always answers, so it has no escalation series
    assert value(registry, "kascade_escalations_total", from_tier="small") == 0.0
    assert value(registry, "kascade_escalations_total", from_tier="medium") == 0.0
    assert value(registry, "kascade_escalations_total", from_tier="large") is None
    assert value(registry, "kascade_cost_total", kind="actual") == 0.0
    assert value(registry, "kascade_cost_total", kind="baseline") == 0.0
    for outcome in ("verdict", "no_verdict", "skipped"):
        assert value(registry, "kascade_judge_questions_total", outcome=outcome) == 0.0
    assert value(registry, "kascade_judge_cost_total") == 0.0


def test_exposition_names(registry: CollectorRegistry, metrics: RouterMetrics) -> None:
    text = generate_latest(registry).decode()
    for name in (
        "kascade_requests_total",
        "kascade_escalations_total",
        "kascade_tier_calls_total",
        "kascade_tier_latency_seconds_bucket",
        "kascade_confidence_bucket",
        "kascade_cost_total",
        "kascade_tokens_total",
    ):
        assert f"\n{name}{{" in text


def test_confidence_buckets() -> None:
    assert len(CONFIDENCE_BUCKETS) == 20
    assert CONFIDENCE_BUCKETS[0] == 0.05
    assert CONFIDENCE_BUCKETS[5] == 0.3
    assert CONFIDENCE_BUCKETS[-1] == 1.0


def test_a_request_escalated_twice(registry: CollectorRegistry, metrics: RouterMetrics) -> None:
    outcome = RequestOutcome(
        answered_by="large",
        calls=(
            TierCall("small", 100, 10, 0.2, ok=True, confidence=0.3),
            TierCall("medium", 100, 20, 0.5, ok=True, confidence=0.42),
            TierCall("large", 100, 30, 1.5, ok=True),
        ),
        escalated=True,
    )
    metrics.observe(outcome, RequestCost(actual=0.004, baseline=0.003, saved=-0.001))
    assert value(registry, "kascade_requests_total", answered_by="large") == 1.0
    assert value(registry, "kascade_requests_total", answered_by="small") == 0.0
    assert value(registry, "kascade_escalations_total", from_tier="small") == 1.0
    assert value(registry, "kascade_escalations_total", from_tier="medium") == 1.0
    for tier in TIERS:
        assert value(registry, "kascade_tier_calls_total", tier=tier, outcome="ok") == 1.0
        assert value(registry, "kascade_tier_latency_seconds_count", tier=tier) == 1.0
    assert value(registry, "kascade_tier_latency_seconds_sum", tier="large") == pytest.approx(1.5)
    assert value(registry, "kascade_tier_latency_seconds_bucket", tier="large", le="1.0") == 0.0
    assert value(registry, "kascade_tier_latency_seconds_bucket", tier="large", le="2.5") == 1.0
    # 0.3 falls in the le=0.3 bucket, 0.42 first in le=0.45
    assert value(registry, "kascade_confidence_bucket", tier="small", le="0.25") == 0.0
    assert value(registry, "kascade_confidence_bucket", tier="small", le="0.3") == 1.0
    assert value(registry, "kascade_confidence_bucket", tier="medium", le="0.4") == 0.0
    assert value(registry, "kascade_confidence_bucket", tier="medium", le="0.45") == 1.0
    # the last tier's answer is not scored
    assert value(registry, "kascade_confidence_count", tier="large") == 0.0
    assert value(registry, "kascade_tokens_total", tier="medium", direction="input") == 100.0
    assert value(registry, "kascade_tokens_total", tier="large", direction="output") == 30.0
    assert value(registry, "kascade_cost_total", kind="actual") == pytest.approx(0.004)
    assert value(registry, "kascade_cost_total", kind="baseline") == pytest.approx(0.003)


def test_an_accepted_request_does_not_escalate(registry: CollectorRegistry, metrics: RouterMetrics) -> None:
    outcome = RequestOutcome("small", (TierCall("small", 50, 5, 0.1, ok=True, confidence=0.97),), escalated=False)
    metrics.observe(outcome, RequestCost(actual=0.001, baseline=0.01, saved=0.009))
    assert value(registry, "kascade_requests_total", answered_by="small") == 1.0
    assert value(registry, "kascade_escalations_total", from_tier="small") == 0.0
    assert value(registry, "kascade_confidence_bucket", tier="small", le="0.95") == 0.0
    assert value(registry, "kascade_confidence_bucket", tier="small", le="1.0") == 1.0


def test_failed_calls_count_as_errors_not_escalations(registry: CollectorRegistry, metrics: RouterMetrics) -> None:
    outcome = RequestOutcome(
        answered_by=None,
        calls=(
            TierCall("small", 0, 0, 0.1, ok=False),
            TierCall("medium", 80, 8, 0.4, ok=True, confidence=0.2),
            TierCall("large", 0, 0, 60.0, ok=False),
        ),
        escalated=True,
    )
    metrics.observe(outcome, RequestCost(actual=0.0001, baseline=0.0, saved=-0.0001))
    assert value(registry, "kascade_requests_total", answered_by="none") == 1.0
    assert value(registry, "kascade_tier_calls_total", tier="small", outcome="error") == 1.0
    assert value(registry, "kascade_tier_calls_total", tier="large", outcome="error") == 1.0
    assert value(registry, "kascade_tier_calls_total", tier="medium", outcome="ok") == 1.0
    assert value(registry, "kascade_escalations_total", from_tier="small") == 0.0
    assert value(registry, "kascade_escalations_total", from_tier="medium") == 1.0
    assert value(registry, "kascade_cost_total", kind="baseline") == 0.0


def test_a_retry_that_succeeds_is_the_answer(registry: CollectorRegistry, metrics: RouterMetrics) -> None:
    outcome = RequestOutcome(
        "small",
        (TierCall("small", 0, 0, 5.0, ok=False), TierCall("small", 10, 2, 0.1, ok=True, confidence=0.9)),
        escalated=False,
    )
    metrics.observe(outcome, RequestCost(actual=0.0, baseline=0.0, saved=0.0))
    assert value(registry, "kascade_escalations_total", from_tier="small") == 0.0
    assert value(registry, "kascade_tier_calls_total", tier="small", outcome="error") == 1.0
    assert value(registry, "kascade_tier_calls_total", tier="small", outcome="ok") == 1.0


def test_metrics_and_ledger_agree_on_cost(registry: CollectorRegistry) -> None:
    prices = {
        "small": Price(input_per_million=0.1, output_per_million=0.2),
        "large": Price(input_per_million=1, output_per_million=2),
    }
    ledger = Ledger(prices)
    metrics = RouterMetrics(registry, "demo", list(prices))
    outcomes = [
        RequestOutcome("small", (TierCall("small", 1000, 500, 0.2, ok=True, confidence=0.9),), False),
        RequestOutcome(
            "large",
            (TierCall("small", 1000, 500, 0.2, ok=True, confidence=0.2), TierCall("large", 1000, 400, 1.0, ok=True)),
            True,
        ),
    ]
    for outcome in outcomes:
        metrics.observe(outcome, ledger.record(outcome))
    snapshot = ledger.snapshot()
    assert value(registry, "kascade_cost_total", kind="actual") == pytest.approx(snapshot["cost"]["actual"])
    assert value(registry, "kascade_cost_total", kind="baseline") == pytest.approx(snapshot["cost"]["baseline"])
    assert value(registry, "kascade_escalations_total", from_tier="small") == snapshot["escalations"]


def test_two_routers_on_separate_registries_do_not_share_counters() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    RouterMetrics(first, "demo", TIERS).observe(
        RequestOutcome("small", (TierCall("small", 1, 1, 0.1, ok=True, confidence=0.9),), False),
        RequestCost(0.0, 0.0, 0.0),
    )
    RouterMetrics(second, "demo", TIERS)
    assert value(first, "kascade_requests_total", answered_by="small") == 1.0
    assert value(second, "kascade_requests_total", answered_by="small") == 0.0


def test_judge_questions_are_counted_by_outcome_with_their_cost(
    registry: CollectorRegistry, metrics: RouterMetrics
) -> None:
    metrics.observe_judge("verdict", 0.002)
    metrics.observe_judge("no_verdict", 0.001)
    metrics.observe_judge("skipped")
    assert value(registry, "kascade_judge_questions_total", outcome="verdict") == 1.0
    assert value(registry, "kascade_judge_questions_total", outcome="no_verdict") == 1.0
    assert value(registry, "kascade_judge_questions_total", outcome="skipped") == 1.0
    assert value(registry, "kascade_judge_cost_total") == pytest.approx(0.003)
