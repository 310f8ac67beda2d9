"""A measured judge error in the bound: the goal is tightened by the false-agreement bound, and it holds."""

from __future__ import annotations

import random

import pytest

from kascade.calibration.bounds import upper_bound
from kascade.calibration.judge_error import judged_goal
from kascade.calibration.selection import Goal, GoalKind, Outcome, select_threshold


def test_the_goal_is_tightened_by_the_upper_bound_on_false_agreements() -> None:
    goal = judged_goal(0.9, 3, 200, confidence=0.95)
    assert goal.false_agreement_bound == pytest.approx(upper_bound(3, 200, 0.025))
    assert goal.judged_min_agreement == pytest.approx(0.9 + goal.false_agreement_bound)
    assert goal.selection_confidence == pytest.approx(0.975)
    assert 0.015 < goal.false_agreement_bound < 0.05


def test_a_judge_too_wrong_for_the_goal_leaves_nothing_to_certify() -> None:
    assert judged_goal(0.9, 30, 200, confidence=0.95).judged_min_agreement is None
    assert judged_goal(0.5, 30, 200, confidence=0.95).judged_min_agreement is not None


@pytest.mark.parametrize(("min_agreement", "confidence"), [(1.2, 0.95), (0.9, 1.0), (0.9, 0.0)])
def test_goals_and_confidences_outside_their_range_are_refused(min_agreement: float, confidence: float) -> None:
    with pytest.raises(ValueError):
        judged_goal(min_agreement, 0, 10, confidence=confidence)


def _population(rng: random.Random, size: int) -> list[tuple[float, bool, bool]]:
    """(score, truly agrees, judged agreeing): a judge that says agree on 15% of true disagreements."""
    rows = []
    for _ in range(size):
        score = rng.random()
        truth = rng.random() < 0.5 + 0.5 * score
        judged = truth or rng.random() < 0.15
        rows.append((score, truth, judged))
    return rows


def _delivered(
    calibration: list[tuple[float, bool, bool]], population: list[tuple[float, bool, bool]], target: float, level: float
) -> float:
    """True agreement delivered on the population by the threshold certified for `target` on judged agreement."""
    outcomes = [Outcome(score, judged) for score, _, judged in calibration]
    chosen = select_threshold([Goal(GoalKind.min_agreement, target)], outcomes, confidence=level)
    threshold = 1.1 if chosen.threshold is None else chosen.threshold
    return 1 - sum(score >= threshold and not truth for score, truth, _ in population) / len(population)


def test_certifying_the_tightened_goal_on_judged_agreement_holds_the_true_goal() -> None:
    # Synthetic: the judge's errors were measured on a set of their own, the threshold chosen on judged agreement,
    # and the true agreement delivered measured on a large population; untightened, the judge's errors break it.
    rng = random.Random(7)
    population = _population(rng, 40_000)
    held, broken, runs = 0, 0, 40
    for _ in range(runs):
        measured = rng.sample(population, 400)
        false_agreements = sum(judged and not truth for _, truth, judged in measured)
        goal = judged_goal(0.85, false_agreements, len(measured), confidence=0.9)
        assert goal.judged_min_agreement is not None
        calibration = rng.sample(population, 1500)
        held += _delivered(calibration, population, goal.judged_min_agreement, goal.selection_confidence) >= 0.85
        broken += _delivered(calibration, population, 0.85, 0.9) < 0.85
    assert held / runs >= 0.9
    assert broken / runs > 0.5  # the guarantee relative to the judge alone misses the true goal here
