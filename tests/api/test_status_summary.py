"""The Tiers, Escalation, Saved, Reserved and Net columns of `kubectl get modelcascades`."""

from __future__ import annotations

import pytest

from kascade.api import StatusSummary, summarize_status
from kascade.api.modelcascade import Cost, ModelCascadeStatus, TierStatus, Traffic
from kascade.api.summary import format_gpu_hours, format_money, format_net_saved, format_reserved, format_saved


def _status(**fields: object) -> ModelCascadeStatus:
    return ModelCascadeStatus.model_validate(fields)


def test_a_fresh_cascade_shows_no_figures_yet() -> None:
    assert summarize_status(ModelCascadeStatus(), tier_count=2) == StatusSummary(
        tiers="0/2", escalation="-", saved="-", reserved="-", net_saved="-"
    )


def test_a_busy_cascade() -> None:
    status = _status(
        tiers=[
            {"name": "small", "readyReplicas": 2, "replicas": 2},
            {"name": "large", "readyReplicas": 1, "replicas": 1},
        ],
        traffic={"requests": 200, "escalations": 25, "escalationRate": 0.125},
        cost={"currency": "USD", "actual": 1.5, "baseline": 2.73, "saved": 1.23, "netSaved": 1.23},
    )
    assert summarize_status(status) == StatusSummary(
        tiers="2/2", escalation="12.5%", saved="USD 1.23 (45.1%)", reserved="-", net_saved="USD 1.23 (45.1%)"
    )


def test_a_tier_serves_with_one_ready_replica_and_external_tiers_say_so_themselves() -> None:
    tiers = [
        TierStatus(name="small", ready_replicas=1, replicas=3),  # serving, scaling up
        TierStatus(name="medium", ready_replicas=0, replicas=1),  # not yet
        TierStatus(name="api", ready=True),  # engine external: no pods
    ]
    assert summarize_status(ModelCascadeStatus(tiers=tiers)).tiers == "2/3"
    assert summarize_status(ModelCascadeStatus(tiers=tiers), tier_count=4).tiers == "2/4"
    tiers[2] = TierStatus(name="api", ready=False, ready_replicas=5)
    assert summarize_status(ModelCascadeStatus(tiers=tiers)).tiers == "1/3"


def test_tiers_removed_from_the_spec_are_not_counted_above_the_total() -> None:
    tiers = [TierStatus(name=f"t{i}", ready_replicas=1) for i in range(3)]
    assert summarize_status(ModelCascadeStatus(tiers=tiers), tier_count=2).tiers == "2/2"


@pytest.mark.parametrize(
    ("rate", "shown"), [(0.0, "0.0%"), (0.125, "12.5%"), (1.0, "100.0%"), (1.7, "100.0%"), (-0.1, "0.0%")]
)
def test_escalation_is_a_percentage(rate: float, shown: str) -> None:
    assert summarize_status(ModelCascadeStatus(traffic=Traffic(requests=10, escalation_rate=rate))).escalation == shown


@pytest.mark.parametrize(
    ("cost", "shown"),
    [
        (Cost(), "-"),
        (Cost(baseline=2.0, actual=2.0, saved=0.0), "USD 0.00 (0.0%)"),
        (Cost(currency="EUR", baseline=1000.0, actual=250.0, saved=750.0), "EUR 750.00 (75.0%)"),
        (Cost(baseline=12345.0, actual=2345.0, saved=10000.0), "USD 10,000.00 (81.0%)"),
        # A cascade that escalates nearly everything costs more than the last tier alone.
        (Cost(baseline=1.0, actual=1.2, saved=-0.2), "USD -0.20 (-20.0%)"),
        # Local demos save fractions of a cent: still visible.
        (Cost(baseline=0.0042, actual=0.0012, saved=0.003), "USD 0.0030 (71.4%)"),
        (Cost(baseline=0.0, saved=0.5), "USD 0.50"),
    ],
)
def test_saved_shows_money_and_share(cost: Cost, shown: str) -> None:
    assert format_saved(cost) == shown


def test_saved_share_comes_from_the_amounts_not_a_stale_percent() -> None:
    cost = Cost(baseline=4.0, actual=3.0, saved=1.0, saved_percent=99.0)
    assert format_saved(cost) == "USD 1.00 (25.0%)"


@pytest.mark.parametrize(
    ("cost", "shown"),
    [
        (Cost(), "-"),
        (Cost(gpu_hours=120.0, reservation_cost=96.0), "USD 96.00 (120.0 GPU-h)"),
        (Cost(gpu_hours=120.0), "USD 0.00 (120.0 GPU-h)"),  # GPUs held, no price set: the hours still show
        (Cost(currency="EUR", gpu_hours=0.0042, reservation_cost=0.00336), "EUR 0.0034 (0.0042 GPU-h)"),
    ],
)
def test_reserved_shows_the_bill_and_its_gpu_hours(cost: Cost, shown: str) -> None:
    assert format_reserved(cost) == shown


@pytest.mark.parametrize(
    ("cost", "shown"),
    [
        (Cost(), "-"),
        # Usage saved 20 of 30; the last tier reserved 12, the small tier 1.60.
        (Cost(actual=10.0, baseline=30.0, reservation_cost=13.6, reservation_baseline=12.0), "USD 18.40 (43.8%)"),
        # No traffic yet: only the small tier's reservation shows.
        (Cost(reservation_cost=6.8, reservation_baseline=6.0), "USD -0.80 (-13.3%)"),
        # A hosted last tier reserves nothing: the small tiers' GPUs against the API money they kept.
        (Cost(actual=4.0, baseline=10.0, reservation_cost=8.0), "USD -2.00 (-20.0%)"),
    ],
)
def test_net_weighs_usage_savings_against_the_smaller_tiers_reservation(cost: Cost, shown: str) -> None:
    assert format_net_saved(cost.settled()) == shown


@pytest.mark.parametrize(
    ("hours", "shown"), [(0, "0.0"), (0.1, "0.1"), (0.05, "0.050"), (0.0042, "0.0042"), (1234.56, "1,234.6")]
)
def test_format_gpu_hours(hours: float, shown: str) -> None:
    assert format_gpu_hours(hours) == shown


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (0, "0.00"),
        (1.005, "1.00"),
        (0.5, "0.50"),
        (0.0123, "0.01"),
        (0.0012, "0.0012"),
        (0.000012, "0.000012"),
        (-0.0012, "-0.0012"),
        (1234567.891, "1,234,567.89"),
    ],
)
def test_format_money(amount: float, shown: str) -> None:
    assert format_money(amount) == shown


def test_summary_round_trips_through_status() -> None:
    status = _status(traffic={"requests": 4, "escalationRate": 0.25})
    status.summary = summarize_status(status, tier_count=2)
    dumped = status.model_dump(mode="json", by_alias=True)
    assert dumped["summary"] == {"tiers": "0/2", "escalation": "25.0%", "saved": "-", "reserved": "-", "netSaved": "-"}
    assert ModelCascadeStatus.model_validate(dumped).summary == status.summary
