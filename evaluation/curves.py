"""Cost–quality curves of a two-tier cascade, for one confidence method, with the random and oracle baselines.

Pure. Every example carries the small tier's score, whether its answer
agrees with the last tier's, whether each is correct (where there is a
reference) and what each call cost (from the real token counts). Sweeping
the threshold from "the small tier answers nothing" to "it answers
everything" gives, at each cut: the share answered by the small tier, the
cascade's agreement with the last tier alone, its accuracy, its cost (the
small tier is always asked; the last tier only when it escalates) and the
saving against the last tier alone.

Baselines: random routing at the same share (the floor: any score worth
having beats it) and the oracle that escalates exactly the requests the
small tier gets wrong (the ceiling). The area under the curve is the mean
quality over the share axis (the deferral curve of Gupta et al., 2024):
random scores (q_small + q_last) / 2, a perfect ranking the oracle's area.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Judged:
    """One example after both tiers answered it."""

    score: float
    agrees: bool
    small_correct: bool | None
    last_correct: bool | None
    small_cost: float
    last_cost: float


@dataclass(frozen=True)
class CurvePoint:
    threshold: float  # accept at or above; +inf: the small tier answers nothing
    small_share: float
    agreement: float
    accuracy: float | None
    cost: float  # total, in the price currency
    saving: float  # 1 - cost / cost of the last tier alone


def _good(example: Judged) -> bool:
    """What the small tier should keep: a correct answer where there is a reference, else an agreeing one."""
    return example.small_correct if example.small_correct is not None else example.agrees


def _labelled(examples: Sequence[Judged]) -> bool:
    return bool(examples) and all(e.small_correct is not None and e.last_correct is not None for e in examples)


def sweep(examples: Sequence[Judged]) -> list[CurvePoint]:
    """The curve from no example accepted to all of them, one point per distinct score (ties move together)."""
    n = len(examples)
    if n == 0:
        return []
    labelled = _labelled(examples)
    ordered = sorted(examples, key=lambda e: e.score, reverse=True)
    last_alone = sum(e.last_cost for e in examples)
    small_total = sum(e.small_cost for e in examples)
    disagreements, correct = 0, sum(bool(e.last_correct) for e in examples) if labelled else 0
    escalated_cost = last_alone
    points = [_point(float("inf"), 0, n, disagreements, correct, labelled, small_total + escalated_cost, last_alone)]
    for index, example in enumerate(ordered):
        disagreements += not example.agrees
        if labelled:
            correct += bool(example.small_correct) - bool(example.last_correct)
        escalated_cost -= example.last_cost
        if index + 1 < n and ordered[index + 1].score == example.score:
            continue  # a threshold cannot split equal scores
        points.append(
            _point(
                example.score, index + 1, n, disagreements, correct, labelled, small_total + escalated_cost, last_alone
            )
        )
    return points


def _point(
    threshold: float,
    kept: int,
    n: int,
    disagreements: int,
    correct: int,
    labelled: bool,
    cost: float,
    last_alone: float,
) -> CurvePoint:
    return CurvePoint(
        threshold=threshold,
        small_share=kept / n,
        agreement=1.0 - disagreements / n,
        accuracy=correct / n if labelled else None,
        cost=cost,
        saving=1.0 - cost / last_alone if last_alone > 0 else 0.0,
    )


def quality(point: CurvePoint) -> float:
    """The curve's quality axis: accuracy where there are references, else agreement with the last tier."""
    return point.accuracy if point.accuracy is not None else point.agreement


def area(points: Sequence[CurvePoint]) -> float:
    """Mean quality over the share answered by the small tier (trapezoids between the sweep's points)."""
    total = 0.0
    for before, after in itertools.pairwise(points):
        total += (after.small_share - before.small_share) * (quality(before) + quality(after)) / 2.0
    return total


def oracle(examples: Sequence[Judged]) -> list[CurvePoint]:
    """The ceiling: a score that ranks every answer the small tier got right above every one it got wrong."""
    return sweep(
        [
            Judged(float(_good(e)), e.agrees, e.small_correct, e.last_correct, e.small_cost, e.last_cost)
            for e in examples
        ]
    )


def random_routing(examples: Sequence[Judged], small_share: float) -> CurvePoint:
    """The floor: the expected point when a random `small_share` of requests stays on the small tier."""
    n = len(examples)
    agree_rate = sum(e.agrees for e in examples) / n
    accuracy = None
    if _labelled(examples):
        small_acc = sum(bool(e.small_correct) for e in examples) / n
        last_acc = sum(bool(e.last_correct) for e in examples) / n
        accuracy = small_share * small_acc + (1.0 - small_share) * last_acc
    last_alone = sum(e.last_cost for e in examples)
    cost = sum(e.small_cost for e in examples) + (1.0 - small_share) * last_alone
    return CurvePoint(
        float("nan"),
        small_share,
        small_share * agree_rate + (1.0 - small_share),
        accuracy,
        cost,
        1.0 - cost / last_alone if last_alone > 0 else 0.0,
    )


def at_threshold(examples: Sequence[Judged], threshold: float) -> CurvePoint:
    """The cascade's point when the small tier keeps answers scoring at or above `threshold`."""
    points = sweep(examples)
    kept = [p for p in points if p.threshold >= threshold]
    return CurvePoint(threshold, *_fields(kept[-1]))


def _fields(point: CurvePoint) -> tuple[float, float, float | None, float, float]:
    return point.small_share, point.agreement, point.accuracy, point.cost, point.saving


def best_share_at(points: Sequence[CurvePoint], min_quality: float) -> CurvePoint | None:
    """The point keeping most requests on the small tier whose quality is at least `min_quality`."""
    meeting = [p for p in points if quality(p) >= min_quality - 1e-12]
    return max(meeting, key=lambda p: p.small_share) if meeting else None


def brier(examples: Sequence[Judged]) -> float:
    """Mean squared error of the score read as the probability that the small answer is good."""
    return sum((e.score - _good(e)) ** 2 for e in examples) / len(examples)


def expected_calibration_error(examples: Sequence[Judged], bins: int = 10) -> float:
    """ECE over `bins` equal-width score bins: sum_b (n_b / n) |mean score_b - share good_b|."""
    buckets: list[list[Judged]] = [[] for _ in range(bins)]
    for example in examples:
        buckets[min(int(example.score * bins), bins - 1)].append(example)
    n = len(examples)
    return sum(
        len(b) / n * abs(sum(e.score for e in b) / len(b) - sum(_good(e) for e in b) / len(b)) for b in buckets if b
    )


def auroc(examples: Sequence[Judged]) -> float | None:
    """How well the score ranks good answers above bad ones (Mann-Whitney; ties count half); None if one class."""
    good = [e.score for e in examples if _good(e)]
    bad = [e.score for e in examples if not _good(e)]
    if not good or not bad:
        return None
    ranked = sorted([(s, 1) for s in good] + [(s, 0) for s in bad])
    rank_sum, index = 0.0, 0
    while index < len(ranked):
        end = index
        while end + 1 < len(ranked) and ranked[end + 1][0] == ranked[index][0]:
            end += 1
        average_rank = (index + end) / 2.0 + 1.0
        rank_sum += average_rank * sum(flag for _, flag in ranked[index : end + 1])
        index = end + 1
    return (rank_sum - len(good) * (len(good) + 1) / 2.0) / (len(good) * len(bad))
