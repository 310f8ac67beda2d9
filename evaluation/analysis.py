"""What each confidence method buys on a judged pair: curves, areas, calibration, and held-out figures over
many random calibration/held-out splits.

The learned score is always measured on examples it was not fitted on:
cross-fitted (each fold scored by a fit on the others) for the curves, and
fitted on half of each calibration split (the threshold chosen on the other
half) in the split study.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kascade.api.modelcascade import ConfidenceMethod, ScoredSpan
from kascade.calibration.selection import Goal, Outcome, select_threshold
from kascade.evaluation import curves
from kascade.evaluation.judging import JudgedPair
from kascade.evaluation.scoring import ScoreMethod, fit_learned, score_answers

QUALITY_SHARE = 0.99  # the split study's target: at least 99% of the last tier's quality alone


@dataclass
class MethodReport:
    label: str
    method: ScoreMethod | None  # None for the baselines
    points: list[curves.CurvePoint]
    area: float
    auroc: float | None = None
    brier: float | None = None
    ece: float | None = None
    best_at_target: curves.CurvePoint | None = None  # most kept at >= 99% of the last tier's quality (in sample)
    held_out: dict = field(default_factory=dict)  # the split study


def last_alone_quality(pair: JudgedPair) -> float:
    if pair.labelled:
        return sum(bool(c) for c in pair.last_correct) / len(pair.examples)
    return 1.0


def cross_fitted_learned(pair: JudgedPair, span: ScoredSpan, *, folds: int = 5, seed: int = 0) -> list[float]:
    """The learned score of every example, each from a fit on the other folds."""
    n = len(pair.examples)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    scores = [0.0] * n
    targets = pair.targets()
    for fold in range(folds):
        test = set(order[fold::folds])
        train = [i for i in range(n) if i not in test]
        fitted = _fit(pair, train, targets, span)
        tested = sorted(test)
        for i, value in zip(
            tested,
            score_answers(fitted, [pair.examples[i] for i in tested], [pair.small[i] for i in tested]),
            strict=True,
        ):
            scores[i] = value
    return scores


def _fit(pair: JudgedPair, indices: Sequence[int], targets: Sequence[bool], span: ScoredSpan) -> ScoreMethod:
    return fit_learned(
        [pair.examples[i] for i in indices],
        [pair.small[i] for i in indices],
        [targets[i] for i in indices],
        span=span,
        target="correctness" if pair.labelled else "agreement",
    )


def report_method(pair: JudgedPair, label: str, method: ScoreMethod | None, scores: Sequence[float]) -> MethodReport:
    judged = pair.with_scores(scores)
    points = curves.sweep(judged)
    return MethodReport(
        label=label,
        method=method,
        points=points,
        area=curves.area(points),
        auroc=curves.auroc(judged),
        brier=curves.brier(judged),
        ece=curves.expected_calibration_error(judged),
        best_at_target=curves.best_share_at(points, QUALITY_SHARE * last_alone_quality(pair)),
    )


def baselines(pair: JudgedPair) -> list[MethodReport]:
    judged = pair.with_scores([0.0] * len(pair.examples))
    oracle_points = curves.oracle(judged)
    shares = [i / 100 for i in range(101)]
    random_points = [curves.random_routing(judged, share) for share in shares]
    target = QUALITY_SHARE * last_alone_quality(pair)
    return [
        MethodReport(
            "oracle (ceiling)",
            None,
            oracle_points,
            curves.area(oracle_points),
            best_at_target=curves.best_share_at(oracle_points, target),
        ),
        MethodReport(
            "random (floor)",
            None,
            random_points,
            curves.area(random_points),
            best_at_target=curves.best_share_at(random_points, target),
        ),
    ]


Scorer = Callable[
    [Sequence[int]], tuple[list[float], list[int]]
]  # calibration indices -> (scores of all, selection part)


def split_study(
    pair: JudgedPair, method: ScoreMethod, *, goals: Sequence[Goal], confidence: float, splits: int = 100, seed: int = 0
) -> dict:
    """Held-out figures over `splits` random halvings: the threshold chosen on one half, measured on the other.

    Two ways of choosing: the point estimate that keeps most requests at
    >= 99% of the last tier's quality on the calibration half (what one does
    without a bound), and `select_threshold` for `goals` (with the bound).
    """
    n = len(pair.examples)
    fixed = None if method.method is ConfidenceMethod.learned else score_answers(method, pair.examples, pair.small)
    rng = random.Random(seed)
    point_runs, bound_runs = [], []
    for _ in range(splits):
        order = list(range(n))
        rng.shuffle(order)
        calibration, held_out = order[: n // 2], order[n // 2 :]
        scores, selection_part = _scores_for_split(pair, method, fixed, calibration)
        point_runs.append(_point_estimate_run(pair, scores, calibration, held_out))
        if goals:
            bound_runs.append(_bound_run(pair, scores, selection_part, held_out, goals, confidence))
    return {
        "splits": splits,
        "point_estimate": _summarise(point_runs),
        "bound": _summarise(bound_runs) if goals else None,
    }


def _scores_for_split(
    pair: JudgedPair, method: ScoreMethod, fixed: list[float] | None, calibration: list[int]
) -> tuple[list[float], list[int]]:
    if fixed is not None:
        return fixed, calibration
    fit_part, selection_part = calibration[: len(calibration) // 2], calibration[len(calibration) // 2 :]
    fitted = _fit(pair, fit_part, pair.targets(), method.span)
    return score_answers(fitted, pair.examples, pair.small), selection_part


def _quality_ratio(pair: JudgedPair, point: curves.CurvePoint, indices: Sequence[int]) -> float:
    if pair.labelled:
        last = sum(bool(pair.last_correct[i]) for i in indices) / len(indices)
        return (point.accuracy or 0.0) / last if last > 0 else 1.0
    return point.agreement


def _point_estimate_run(pair: JudgedPair, scores: list[float], calibration: list[int], held_out: list[int]) -> dict:
    cal_points = curves.sweep(pair.with_scores(scores, calibration))
    cal_target = QUALITY_SHARE * _quality_of_last(pair, calibration)
    chosen = curves.best_share_at(cal_points, cal_target)
    threshold = chosen.threshold if chosen is not None else float("inf")
    point = curves.at_threshold(pair.with_scores(scores, held_out), threshold)
    ratio = _quality_ratio(pair, point, held_out)
    met = ratio >= QUALITY_SHARE - 1e-12
    return {
        "small_share": point.small_share,
        "quality_ratio": ratio,
        "saving": point.saving,
        "met": met,
        "quality_met": met,
    }


def _quality_of_last(pair: JudgedPair, indices: Sequence[int]) -> float:
    if not pair.labelled:
        return 1.0
    return sum(bool(pair.last_correct[i]) for i in indices) / len(indices)


def _bound_run(
    pair: JudgedPair,
    scores: list[float],
    selection_part: list[int],
    held_out: list[int],
    goals: Sequence[Goal],
    confidence: float,
) -> dict:
    outcomes = [Outcome(scores[i], pair.agrees[i], pair.small_correct[i], pair.last_correct[i]) for i in selection_part]
    selection = select_threshold(goals, outcomes, confidence=confidence)
    threshold = selection.threshold if selection.threshold is not None else float("inf")
    point = curves.at_threshold(pair.with_scores(scores, held_out), threshold)
    met = all(_goal_met(goal, point) for goal in goals)
    ratio = _quality_ratio(pair, point, held_out)
    return {
        "small_share": point.small_share,
        "quality_ratio": ratio,
        "saving": point.saving,
        "met": met,
        "quality_met": ratio >= QUALITY_SHARE - 1e-12,
    }


def _goal_met(goal: Goal, point: curves.CurvePoint) -> bool:
    from kascade.calibration.selection import GoalKind

    if goal.kind is GoalKind.min_agreement:
        return point.agreement >= goal.target
    if goal.kind is GoalKind.min_accuracy:
        return (point.accuracy or 0.0) >= goal.target
    return 1.0 - point.small_share <= goal.target


def _summarise(runs: list[dict]) -> dict:
    shares = [r["small_share"] for r in runs]
    return {
        "small_share_median": statistics.median(shares),
        "small_share_min": min(shares),
        "small_share_max": max(shares),
        "quality_ratio_median": statistics.median(r["quality_ratio"] for r in runs),
        "saving_median": statistics.median(r["saving"] for r in runs),
        "met_share": sum(r["met"] for r in runs) / len(runs),
        "quality_met_share": sum(r["quality_met"] for r in runs) / len(runs),  # >= 99% of the last tier's quality
    }
