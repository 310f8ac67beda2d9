"""Online calibration on a synthetic workload whose agreement is known: it converges, holds, follows a shift, and
says why when the goal cannot be met."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from kascade.api.counters import CounterFigures
from kascade.api.loop import Calibration
from kascade.api.status import CalibrationStatus
from kascade.calibration.online import BIN_EDGES, bin_edge, bin_key, calibrate_tiers, window_samples_of
from kascade.calibration.selection import Goal, GoalKind, Outcome, select_threshold


class Traffic:
    """Requests with uniform scores; the small tier agrees with the last one with probability `agreement(score)`."""

    def __init__(self, agreement: Callable[[float], float], seed: int = 0) -> None:
        self.agreement = agreement
        self.random = random.Random(seed)
        self.samples: dict[str, int] = {}
        self.agreed: dict[str, int] = {}

    def measure(self, requests: int) -> CounterFigures:
        """The router's counts after `requests` more drawn requests (cumulative, as the slots hold them)."""
        for _ in range(requests):
            score = self.random.random()
            key = bin_key("small", score)
            self.samples[key] = self.samples.get(key, 0) + 1
            if self.random.random() < self.agreement(score):
                self.agreed[key] = self.agreed.get(key, 0) + 1
        return CounterFigures(calibration_samples=dict(self.samples), calibration_agreed=dict(self.agreed))


def true_agreement(agreement: Callable[[float], float], threshold: float, grid: int = 20_000) -> float:
    """The cascade's agreement with the last tier at `threshold`: 1 - P(score >= t and disagree)."""
    return 1 - sum(1 - agreement((i + 0.5) / grid) for i in range(grid) if (i + 0.5) / grid >= threshold) / grid


def run(
    calibration: Calibration,
    traffic: Traffic,
    steps: int,
    per_step: int,
    status: CalibrationStatus | None = None,
    declared: float = 0.95,
) -> list[CalibrationStatus]:
    seen = []
    for step in range(steps):
        status = calibrate_tiers(
            calibration,
            {"small": declared},
            traffic.measure(per_step),
            status,
            now=f"2026-11-30T00:{step:02d}:00Z",
            window_samples=window_samples_of(calibration),
        )
        seen.append(status)
    return seen


def linear(score: float) -> float:
    return 0.5 + 0.5 * score  # agreement rises with the score


GOAL = Calibration(min_agreement=0.9, shadow_sample_rate=0.1, min_samples=200)


def test_the_threshold_converges_to_the_goal_and_stays() -> None:
    history = run(GOAL, Traffic(linear), steps=30, per_step=400)
    thresholds = [s.tiers[0].threshold for s in history]
    final = thresholds[-1]
    oracle = min(e for e in BIN_EDGES if true_agreement(linear, e) >= 0.9)  # the boldest edge meeting the goal
    assert true_agreement(linear, final) >= 0.9  # the goal holds on the traffic itself
    assert oracle <= final <= oracle + 0.15  # and the threshold is not needlessly safe
    assert thresholds[0] < 0.95 and history[0].tiers[0].reason == "GoalMet"  # 400 samples: the first step moves it
    # It stays there: within a bin of the oracle, the goal within a point of tolerance, few moves (hysteresis).
    settled = thresholds[5:]
    assert all(oracle - 0.05 - 1e-9 <= t <= oracle + 0.1 + 1e-9 for t in settled)
    assert all(true_agreement(linear, t) >= 0.89 for t in settled)
    assert sum(a != b for a, b in zip(settled, settled[1:])) <= 4
    tier = history[-1].tiers[0]
    assert tier.met and tier.agreement is not None and tier.agreement_low is not None
    assert tier.agreement_low <= tier.agreement <= (tier.agreement_high or 1.0)


def test_a_workload_shift_moves_it_and_a_sliding_window_forgets_the_old_traffic() -> None:
    traffic = Traffic(linear)
    before = run(GOAL, traffic, steps=20, per_step=400)[-1]
    traffic.agreement = lambda score: 0.2 + 0.8 * score**2  # the small tier got worse
    after = run(GOAL, traffic, steps=20, per_step=400, status=before)[-1]
    assert after.tiers[0].threshold > before.tiers[0].threshold
    assert true_agreement(traffic.agreement, after.tiers[0].threshold) >= 0.9
    assert after.tiers[0].samples <= 2 * window_samples_of(GOAL)


def test_too_few_samples_leave_the_declared_threshold_in_force() -> None:
    (status,) = run(GOAL, Traffic(linear), steps=1, per_step=50)
    tier = status.tiers[0]
    assert tier.threshold == 0.95 and not tier.met and tier.reason == "CollectingSamples"
    assert tier.message == "50 of 200 samples"


def test_a_goal_that_cannot_be_met_holds_the_safest_bound_and_says_why() -> None:
    impossible = Calibration(
        min_agreement=0.99, max_escalation_rate=0.1, shadow_sample_rate=0.1, min_samples=200, max_threshold=0.9
    )
    status = run(impossible, Traffic(linear), steps=3, per_step=1000)[-1]
    tier = status.tiers[0]
    assert not tier.met and tier.reason == "GoalNotMet" and tier.threshold == 0.9
    assert "relax one of them" in tier.message and "held at maxThreshold 0.9" in tier.message


def test_bounds_and_a_changed_spec_threshold() -> None:
    bounded = GOAL.model_copy(update={"min_threshold": 0.8})
    status = run(bounded, Traffic(lambda score: 1.0), steps=3, per_step=500)[-1]  # always agrees: as bold as allowed
    assert status.tiers[0].threshold == 0.8
    restarted = calibrate_tiers(bounded, {"small": 0.97}, CounterFigures(), status, now="t", window_samples=2000)
    assert restarted.tiers[0].threshold == 0.97 and restarted.tiers[0].declared == 0.97  # a new spec value: from it


def test_a_promoted_student_restarts_from_the_spec_threshold_and_forgets_the_old_models_samples() -> None:
    traffic = Traffic(lambda score: 1.0)
    figures = traffic.measure(1500)

    def calibrate(previous: CalibrationStatus | None, model: str) -> CalibrationStatus:
        return calibrate_tiers(
            GOAL, {"small": 0.95}, figures, previous, now="t", window_samples=2000, models={"small": model}
        )

    settled = calibrate(calibrate(None, "pvc://models/v1"), "pvc://models/v1")
    assert (
        settled.tiers[0].threshold < 0.95
        and settled.tiers[0].samples == 1500
        and settled.tiers[0].model == "pvc://models/v1"
    )
    promoted = calibrate(settled, "pvc://students/run-1")
    tier = promoted.tiers[0]
    assert tier.threshold == 0.95 and tier.samples == 0 and tier.reason == "CollectingSamples"
    assert tier.model == "pvc://students/run-1"


def test_scores_fall_in_the_bin_of_the_largest_edge_at_or_below_them() -> None:
    assert bin_edge(0.0) == 0.0 and bin_edge(0.949) == 0.9 + 0.04 and bin_edge(0.95) == 0.95
    assert bin_edge(1.0) == 0.9999 and bin_edge(-0.5) == 0.0
    assert bin_key("small", 0.9961) == "small@0.995"


def test_counted_outcomes_select_what_the_same_outcomes_one_by_one_select() -> None:
    rng = random.Random(3)
    single = [Outcome(round(rng.random(), 2), rng.random() < 0.8) for _ in range(500)]
    counted: dict[tuple[float, bool], int] = {}
    for outcome in single:
        counted[(outcome.score, outcome.agrees)] = counted.get((outcome.score, outcome.agrees), 0) + 1
    grouped = [Outcome(score, agrees, count=n) for (score, agrees), n in counted.items()]
    for goal in (Goal(GoalKind.min_agreement, 0.85), Goal(GoalKind.max_escalation_rate, 0.5)):
        assert select_threshold([goal], grouped) == select_threshold([goal], single)


@pytest.mark.parametrize("rate", [0.0])
def test_online_calibration_is_off_at_rate_zero(rate: float) -> None:
    assert not Calibration(min_agreement=0.9, shadow_sample_rate=rate).online
