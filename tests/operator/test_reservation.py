"""GPU-hours of the tiers' ready replicas, integrated look by look, and what they cost (hand-computed figures).

Two tiers throughout: `small` (1 GPU a replica, 0.80 an hour) and `large`
(4 GPUs a replica, 3.00 an hour). Each look writes its figures into a status
dict, and the next look reads only that dict: what an operator restart keeps.
"""

from __future__ import annotations

from typing import Any

import pytest

from kascade.api.status import Cost, TierStatus
from kascade.operator.reservation import (
    gpu_hours_due,
    hold_gpu_hours,
    integrate_gpu_hours,
    read_reservation,
)

T0 = "2026-03-01T00:00:00Z"


def at(minutes: float) -> str:
    hours, rest = divmod(int(minutes * 60), 3600)
    return f"2026-03-01T{hours:02d}:{rest // 60:02d}:{rest % 60:02d}Z"


def tiers(small: int, large: int, *, small_price: float = 0.80, large_price: float = 3.00) -> list[TierStatus]:
    """This look's tiers with `small` and `large` ready replicas."""
    return [
        TierStatus(name="small", ready_replicas=small, replicas=2, ready_gpus=small * 1, per_gpu_hour=small_price),
        TierStatus(name="large", ready_replicas=large, replicas=1, ready_gpus=large * 4, per_gpu_hour=large_price),
    ]


def look(status: dict[str, Any], seen: list[TierStatus], now: str, usage: Cost | None = None) -> dict[str, Any]:
    """One look, written: the status the next look (or the next operator) reads."""
    reservation = integrate_gpu_hours(read_reservation(status), seen, now)
    return {
        "tiers": [tier.model_dump(mode="json", by_alias=True, exclude_none=True) for tier in reservation.tiers],
        "cost": reservation.costed(usage or Cost()).model_dump(mode="json", by_alias=True),
    }


def per_tier(status: dict[str, Any], field: str) -> dict[str, float]:
    return {tier["name"]: tier[field] for tier in status["tiers"]}


def test_a_first_look_starts_the_clock_and_adds_nothing():
    status = look({}, tiers(2, 1), T0)
    assert status["cost"]["gpuHours"] == 0 and status["cost"]["reservationCost"] == 0
    assert status["cost"]["gpuHoursSince"] == status["cost"]["gpuHoursUntil"] == T0
    assert per_tier(status, "readyGpus") == {"small": 2, "large": 4}
    assert per_tier(status, "gpuHours") == {"small": 0, "large": 0}


def test_each_interval_is_charged_at_what_the_previous_look_saw():
    status = look({}, tiers(2, 1), T0)  # 2 + 4 GPUs from 00:00
    status = look(status, tiers(1, 1), at(60))  # small scaled down: seen at 01:00
    # 00:00-01:00 at the 00:00 look: small 2 GPU-h (1.60), large 4 GPU-h (12.00).
    assert per_tier(status, "gpuHours") == pytest.approx({"small": 2.0, "large": 4.0})
    assert per_tier(status, "reservationCost") == pytest.approx({"small": 1.6, "large": 12.0})
    status = look(status, tiers(1, 1), at(90))
    # 01:00-01:30 at 1 + 4 GPUs: 0.5 and 2 GPU-h more.
    assert per_tier(status, "gpuHours") == pytest.approx({"small": 2.5, "large": 6.0})
    cost = status["cost"]
    assert cost["gpuHours"] == pytest.approx(8.5)
    assert cost["reservationCost"] == pytest.approx(1.6 + 0.4 + 12.0 + 6.0)
    assert cost["reservationBaseline"] == pytest.approx(18.0)  # the last tier's share
    assert (cost["gpuHoursSince"], cost["gpuHoursUntil"]) == (T0, at(90))


def test_net_savings_weigh_usage_savings_against_the_smaller_tiers_reservation():
    status = look({}, tiers(2, 1), T0)
    usage = Cost(actual=10.0, baseline=30.0)  # the routers' per-token figures: saved 20
    cost = look(status, tiers(2, 1), at(60), usage)["cost"]
    # Reserved: small 2 x 0.80 = 1.60, large 4 x 3.00 = 12.00 (the baseline's reservation).
    assert cost["saved"] == pytest.approx(20.0) and cost["savedPercent"] == pytest.approx(200 / 3)
    assert cost["netSaved"] == pytest.approx((30.0 + 12.0) - (10.0 + 13.6))  # 18.4 = saved - the small tier's 1.60
    assert cost["netSavedPercent"] == pytest.approx(100 * 18.4 / 42.0)


def test_a_restart_continues_from_the_status_and_integrates_the_gap_at_what_was_last_seen():
    status = look({}, tiers(2, 1), T0)
    status = look(status, tiers(2, 1), at(60))
    before_the_restart = status["cost"]["gpuHours"]
    assert before_the_restart == pytest.approx(6.0)
    # The operator is down from 01:00 to 04:00; the Deployments keep their pods. A new operator reads the status.
    status = look(dict(status), tiers(2, 1), at(240))
    assert status["cost"]["gpuHours"] == pytest.approx(6.0 + 3 * 6.0)
    assert status["cost"]["reservationCost"] == pytest.approx(4 * 13.6)
    assert status["cost"]["gpuHoursSince"] == T0


def test_a_clock_going_backwards_adds_nothing_and_counts_no_interval_twice():
    status = look({}, tiers(2, 1), T0)
    status = look(status, tiers(2, 1), at(60))
    back = look(status, tiers(2, 1), at(59))
    assert back["cost"]["gpuHours"] == status["cost"]["gpuHours"] == pytest.approx(6.0)
    assert back["cost"]["gpuHoursUntil"] == at(60)
    later = look(back, tiers(2, 1), at(120))
    assert later["cost"]["gpuHours"] == pytest.approx(12.0)  # 01:00-02:00, once


def test_tiers_without_pods_and_tiers_that_come_and_go():
    status = look({}, tiers(2, 1), T0)
    api = TierStatus(name="api", ready=True, per_gpu_hour=0.0)  # engine external: no GPUs of yours
    status = look(status, [*tiers(2, 1)[:1], api], at(60))  # large removed, an external last tier added
    # large's hour before its removal still counts in the totals; its own entry is gone.
    assert status["cost"]["gpuHours"] == pytest.approx(6.0)
    assert status["cost"]["reservationBaseline"] == pytest.approx(12.0)  # large was last at the 00:00 look
    assert per_tier(status, "gpuHours") == {"small": pytest.approx(2.0), "api": 0}
    status = look(status, [*tiers(2, 1)[:1], api], at(120))
    assert status["cost"]["gpuHours"] == pytest.approx(8.0)
    assert status["cost"]["reservationBaseline"] == pytest.approx(12.0)  # the last tier now reserves nothing


def test_a_price_change_applies_from_the_look_that_sees_it():
    status = look({}, tiers(2, 1), T0)
    status = look(status, tiers(2, 1, large_price=2.00), at(60))  # 00:00-01:00 still at 3.00
    assert per_tier(status, "reservationCost")["large"] == pytest.approx(12.0)
    status = look(status, tiers(2, 1, large_price=2.00), at(120))
    assert per_tier(status, "reservationCost")["large"] == pytest.approx(12.0 + 8.0)


def test_holding_writes_the_figures_as_they_were():
    status = look(look({}, tiers(2, 1), T0), tiers(2, 1), at(60))
    held = hold_gpu_hours(read_reservation(status), tiers(2, 1))
    assert [tier.model_dump(mode="json", by_alias=True, exclude_none=True) for tier in held.tiers] == status["tiers"]
    assert held.costed(Cost()).model_dump(mode="json", by_alias=True) == status["cost"]


def test_gpu_hours_are_due_when_the_clock_has_not_started_or_gpus_were_held_for_an_interval():
    assert gpu_hours_due(read_reservation({}), T0, 300)
    holding = read_reservation(look({}, tiers(2, 1), T0))
    assert not gpu_hours_due(holding, at(4.9), 300)
    assert gpu_hours_due(holding, at(5), 300)
    idle = read_reservation(look({}, tiers(0, 0), T0))
    assert not gpu_hours_due(idle, at(60), 300)  # nothing would move: no write
    assert not gpu_hours_due(holding, "not a time", 300)


def test_malformed_stored_figures_read_as_nothing():
    status = look({}, tiers(2, 1), T0)
    status["cost"]["gpuHours"] = "lots"
    status["tiers"][0]["readyGpus"] = -3
    status["tiers"].append({"readyReplicas": 1})  # no name: not a tier
    stored = read_reservation(status)
    assert stored.gpu_hours == 0 and [t.ready_gpus for t in stored.tiers] == [0, 4]
