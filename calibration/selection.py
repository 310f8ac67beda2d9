"""Thresholds from a declared goal, with a finite-sample guarantee.

For each goal the thresholds of a grid fixed in advance are tested in a
fixed sequence, from the safest to the boldest, each with a one-sided
Clopper–Pearson bound at the goal's error level; the walk stops at the first
threshold whose bound misses the goal. Testing in a fixed sequence spends
the whole error level on every test without a multiplicity penalty
(fixed-sequence testing; "Learn then Test", Angelopoulos et al. 2021), so the
threshold chosen meets the goal on new data like the calibration data with
probability at least the stated confidence. Several goals share the error
level equally (Bonferroni).

A goal's loss is a per-request event:
- minAgreement a: the small tier answered and disagreed with the last tier;
  rate <= 1 - a.
- minAccuracy a: the cascade's answer is wrong (the small tier's when it
  answered, the last tier's otherwise); rate <= 1 - a.
- maxEscalationRate r: the request reached the last tier; rate <= r.

Pure and dependency-free (see `bounds`): live-traffic calibration in the
operator reuses it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from kascade.calibration.bounds import upper_bound


class GoalKind(StrEnum):
    min_agreement = "minAgreement"
    min_accuracy = "minAccuracy"
    max_escalation_rate = "maxEscalationRate"


@dataclass(frozen=True)
class Goal:
    kind: GoalKind
    target: float

    @property
    def allowed_rate(self) -> float:
        """The largest rate of loss events the goal allows."""
        return self.target if self.kind is GoalKind.max_escalation_rate else 1.0 - self.target

    def __str__(self) -> str:
        return f"{self.kind.value}={self.target:g}"


@dataclass(frozen=True)
class Outcome:
    """One calibration request: the small tier's score, and how its answer and the last tier's fared."""

    score: float
    agrees: bool  # the small tier's answer matches the last tier's
    small_correct: bool | None = None  # against the reference, where there is one
    last_correct: bool | None = None
    count: int = 1  # requests this outcome stands for (online calibration counts per score bin)


def _grid() -> tuple[float, ...]:
    """Thresholds tested, fixed before any data is seen: 0.000 ... 1.000, denser near 1 where scores crowd."""
    points = {i / 1000 for i in range(1001)}
    points |= {round(1.0 - 10 ** (-k / 4), 10) for k in range(13, 37)}  # 1 - 10^-3.25 ... 1 - 10^-9
    return tuple(sorted(points))


THRESHOLD_GRID = _grid()


@dataclass(frozen=True)
class GoalResult:
    goal: Goal
    delta: float  # the error level this goal was tested at
    threshold: float | None  # the boldest certified threshold; None when not even the safest one is
    events: int  # loss events at that threshold (or at the safest one when none is certified)
    bound: float  # their upper bound
    allowed_events: int  # most loss events the bound certifies among these requests (-1: none)


@dataclass(frozen=True)
class Selection:
    """The chosen threshold (None when the goals cannot all be met on this data) and how each goal fared."""

    threshold: float | None
    results: tuple[GoalResult, ...]
    confidence: float
    trials: int
    reason: str  # why no threshold could be chosen; "" when one was


def _allowed_events(trials: int, rate: float, delta: float) -> int:
    """The most loss events whose upper bound stays within `rate` (-1 when even 0 events do not)."""
    if trials == 0 or upper_bound(0, trials, delta) > rate:
        return -1
    low, high = 0, trials  # upper_bound is increasing in events: binary search the last that fits
    while low < high:
        middle = (low + high + 1) // 2
        if upper_bound(middle, trials, delta) <= rate:
            low = middle
        else:
            high = middle - 1
    return low


class _Counts:
    """Loss events at any threshold from sorted scores and suffix sums: O(log n) per threshold."""

    def __init__(self, outcomes: Sequence[Outcome]) -> None:
        ordered = sorted(outcomes, key=lambda o: o.score)
        self.scores = [o.score for o in ordered]
        self.n = sum(o.count for o in ordered)
        self._disagree_from = self._suffix([o.count * (not o.agrees) for o in ordered])
        self._small_wrong_from = self._suffix([o.count * (o.small_correct is False) for o in ordered])
        self._last_wrong_before = self._prefix([o.count * (o.last_correct is False) for o in ordered])
        self._requests_before = self._prefix([o.count for o in ordered])

    @staticmethod
    def _suffix(counts: list[int]) -> list[int]:
        sums = [0] * (len(counts) + 1)
        for i in range(len(counts) - 1, -1, -1):
            sums[i] = sums[i + 1] + counts[i]
        return sums

    @staticmethod
    def _prefix(counts: list[int]) -> list[int]:
        sums = [0] * (len(counts) + 1)
        for i, count in enumerate(counts):
            sums[i + 1] = sums[i] + count
        return sums

    def events(self, kind: GoalKind, threshold: float) -> int:
        first_accepted = bisect.bisect_left(self.scores, threshold)  # accepted: score >= threshold
        if kind is GoalKind.min_agreement:
            return self._disagree_from[first_accepted]
        if kind is GoalKind.min_accuracy:
            return self._small_wrong_from[first_accepted] + self._last_wrong_before[first_accepted]
        return self._requests_before[first_accepted]  # escalated: score < threshold


def _test_goal(goal: Goal, counts: _Counts, delta: float, grid: Sequence[float]) -> GoalResult:
    allowed = _allowed_events(counts.n, goal.allowed_rate, delta)
    # Safest first: quality goals start where the small tier answers nothing, the escalation goal where it answers all.
    sequence = tuple(grid) if goal.kind is GoalKind.max_escalation_rate else tuple(grid)[::-1]
    safest = float("inf") if goal.kind is not GoalKind.max_escalation_rate else 0.0
    events = counts.events(goal.kind, safest)
    if events > allowed:
        return GoalResult(goal, delta, None, events, upper_bound(events, counts.n, delta) if counts.n else 1.0, allowed)
    chosen, chosen_events = None, events
    for threshold in sequence:
        at = counts.events(goal.kind, threshold)
        if at > allowed:
            break
        chosen, chosen_events = threshold, at
    bound = upper_bound(chosen_events, counts.n, delta)
    return GoalResult(goal, delta, chosen, chosen_events, bound, allowed)


def select_threshold(
    goals: Sequence[Goal],
    outcomes: Sequence[Outcome],
    *,
    confidence: float = 0.95,
    grid: Sequence[float] = THRESHOLD_GRID,
) -> Selection:
    """The threshold that meets every goal with probability >= `confidence`: the boldest one the quality goals
    certify (most requests kept on the small tier), provided the escalation goal certifies it too.

    `grid`: the thresholds that may be chosen, ascending, fixed before the data is seen."""
    if not goals:
        raise ValueError("at least one goal is needed")
    if any(g.kind is GoalKind.min_accuracy for g in goals) and any(
        o.small_correct is None or o.last_correct is None for o in outcomes
    ):
        raise ValueError("minAccuracy needs a reference answer for every calibration example")
    delta = (1.0 - confidence) / len(goals)
    counts = _Counts(outcomes)
    results = tuple(_test_goal(goal, counts, delta, grid) for goal in goals)
    failed = [r for r in results if r.threshold is None]
    if failed:
        return Selection(None, results, confidence, counts.n, _infeasible(failed, counts.n))
    certified = [(r.goal.kind, r.threshold) for r in results if r.threshold is not None]  # all of them: none failed
    quality = [threshold for kind, threshold in certified if kind is not GoalKind.max_escalation_rate]
    budget = [threshold for kind, threshold in certified if kind is GoalKind.max_escalation_rate]
    if not quality:
        return Selection(min(budget), results, confidence, counts.n, "")
    lowest_for_quality = max(quality)
    if budget and lowest_for_quality > min(budget):
        return Selection(
            None,
            results,
            confidence,
            counts.n,
            f"the quality goals need threshold >= {lowest_for_quality:.4g}, and the escalation goal "
            f"allows at most {min(budget):.4g}: relax one of them",
        )
    return Selection(lowest_for_quality, results, confidence, counts.n, "")


def _infeasible(failed: Sequence[GoalResult], trials: int) -> str:
    parts = []
    for result in failed:
        reachable = 1.0 - result.bound if result.goal.kind is not GoalKind.max_escalation_rate else result.bound
        if result.allowed_events < 0:
            parts.append(
                f"{result.goal}: {trials} calibration examples are too few to certify a loss rate of "
                f"{result.goal.allowed_rate:.3g} at this confidence (even no loss at all bounds it at "
                f"{upper_bound(0, trials, result.delta):.3g}); give more examples or relax the goal"
            )
        else:
            what = "reachable" if result.goal.kind is not GoalKind.max_escalation_rate else "the least certifiable"
            parts.append(f"{result.goal} cannot be met on this data; {what}: {result.goal.kind.value}={reachable:.4g}")
    return "; ".join(parts)
