"""Thresholds from a goal: the guarantee holds over random splits, where a point estimate is a coin flip."""

from __future__ import annotations

import random

import pytest

from kascade.calibration.selection import Goal, GoalKind, Outcome, select_threshold


def _synthetic(n: int, seed: int) -> list[Outcome]:
    """Scores uniform in [0, 1]; the small tier agrees with the last with probability 0.6 + 0.4 * score."""
    rng = random.Random(seed)
    outcomes = []
    for _ in range(n):
        score = rng.random()
        small_right = rng.random() < 0.5 + 0.5 * score
        last_right = rng.random() < 0.9
        agrees = rng.random() < 0.6 + 0.4 * score
        outcomes.append(Outcome(score, agrees, small_right, last_right))
    return outcomes


def _disagreement_accepted(outcomes: list[Outcome], threshold: float) -> float:
    return sum(o.score >= threshold and not o.agrees for o in outcomes) / len(outcomes)


def _point_estimate(outcomes: list[Outcome], allowed: float) -> float:
    """What one does without a bound: the lowest threshold whose in-sample loss meets the goal."""
    best = 1.0
    for threshold in sorted({o.score for o in outcomes}, reverse=True):
        if _disagreement_accepted(outcomes, threshold) <= allowed:
            best = threshold
        else:
            break
    return best


def test_the_goal_holds_on_held_out_data_in_at_least_the_promised_share_of_splits() -> None:
    population = _synthetic(40_000, seed=1)
    goal, confidence = Goal(GoalKind.min_agreement, 0.95), 0.9
    rng = random.Random(2)
    held_with_bound = held_with_point = 0
    splits = 200
    for _ in range(splits):
        calibration = rng.sample(population, 800)
        selection = select_threshold([goal], calibration, confidence=confidence)
        assert selection.threshold is not None
        # The held-out figure: the whole population stands for new traffic (it is 50x the calibration set).
        held_with_bound += _disagreement_accepted(population, selection.threshold) <= goal.allowed_rate
        held_with_point += (
            _disagreement_accepted(population, _point_estimate(calibration, goal.allowed_rate)) <= goal.allowed_rate
        )
    assert held_with_bound / splits >= confidence
    # Without the bound the same choice fails about half the time: the test can tell the two apart.
    assert held_with_point / splits < 0.75


def test_accuracy_and_escalation_goals_are_certified_and_combined() -> None:
    outcomes = _synthetic(3000, seed=3)
    accuracy = select_threshold([Goal(GoalKind.min_accuracy, 0.8)], outcomes)
    assert accuracy.threshold is not None
    kept = [o for o in outcomes if o.score >= accuracy.threshold]
    wrong = sum(not o.small_correct for o in kept) + sum(
        not o.last_correct for o in outcomes if o.score < accuracy.threshold
    )
    assert wrong / len(outcomes) <= 0.2
    escalation = select_threshold([Goal(GoalKind.max_escalation_rate, 0.3)], outcomes)
    assert escalation.threshold is not None
    assert sum(o.score < escalation.threshold for o in outcomes) / len(outcomes) <= 0.3
    both = select_threshold([Goal(GoalKind.min_agreement, 0.9), Goal(GoalKind.max_escalation_rate, 0.9)], outcomes)
    assert both.threshold is not None and both.results[0].delta == pytest.approx(0.025)


def test_a_goal_that_cannot_be_met_says_what_can() -> None:
    few = _synthetic(100, seed=4)
    too_few = select_threshold([Goal(GoalKind.min_agreement, 0.999)], few)
    assert too_few.threshold is None
    assert "100 calibration examples are too few" in too_few.reason
    outcomes = _synthetic(2000, seed=5)
    unreachable = select_threshold([Goal(GoalKind.min_accuracy, 0.99)], outcomes)
    assert unreachable.threshold is None
    assert "minAccuracy=0.99 cannot be met on this data; reachable: minAccuracy=0.8" in unreachable.reason
    conflict = select_threshold([Goal(GoalKind.min_agreement, 0.97), Goal(GoalKind.max_escalation_rate, 0.2)], outcomes)
    assert conflict.threshold is None and "relax one of them" in conflict.reason


def test_accuracy_needs_references() -> None:
    with pytest.raises(ValueError, match="minAccuracy needs a reference"):
        select_threshold([Goal(GoalKind.min_accuracy, 0.9)], [Outcome(0.5, True)])
