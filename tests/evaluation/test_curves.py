"""Cost–quality curves, hand-computed on four examples, and the baselines around a real score."""

from __future__ import annotations

import random

import pytest

from kascade.evaluation import curves
from kascade.evaluation.curves import Judged


def _four() -> list[Judged]:
    # score, agrees, small right, last right, small cost, last cost
    return [
        Judged(0.9, True, True, True, 1.0, 10.0),
        Judged(0.7, False, False, True, 1.0, 10.0),
        Judged(0.5, True, True, True, 1.0, 10.0),
        Judged(0.2, False, False, False, 1.0, 10.0),
    ]


def test_the_sweep_by_hand() -> None:
    points = curves.sweep(_four())
    assert [p.small_share for p in points] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [p.agreement for p in points] == [1.0, 1.0, 0.75, 0.75, 0.5]
    assert [p.accuracy for p in points] == [0.75, 0.75, 0.5, 0.5, 0.5]
    # The small tier is always asked (4); the last tier only for what escalates.
    assert [p.cost for p in points] == [44.0, 34.0, 24.0, 14.0, 4.0]
    assert points[-1].saving == pytest.approx(1 - 4 / 40)
    assert points[0].saving == pytest.approx(-0.1)  # escalating everything costs the wasted small calls
    assert curves.at_threshold(_four(), 0.6).small_share == 0.5


def test_equal_scores_move_together() -> None:
    tied = [Judged(0.5, True, None, None, 1, 1), Judged(0.5, False, None, None, 1, 1)]
    assert [p.small_share for p in curves.sweep(tied)] == [0.0, 1.0]


def test_area_brier_ece_auroc_by_hand() -> None:
    examples = _four()
    # accuracy by share: 0.75, 0.75, 0.5, 0.5, 0.5 over steps of 0.25
    assert curves.area(curves.sweep(examples)) == pytest.approx(0.25 * (0.75 + 0.625 + 0.5 + 0.5))
    assert curves.brier(examples) == pytest.approx(((0.9 - 1) ** 2 + 0.7**2 + (0.5 - 1) ** 2 + 0.2**2) / 4)
    assert curves.auroc(examples) == pytest.approx(0.75)  # good {0.9, 0.5} vs bad {0.7, 0.2}: 3 of 4 pairs
    assert curves.expected_calibration_error(examples) == pytest.approx((0.1 + 0.7 + 0.5 + 0.2) / 4)


def test_a_useful_score_lies_between_random_routing_and_the_oracle() -> None:
    rng = random.Random(0)
    examples = []
    for _ in range(2000):
        score = rng.random()
        good = rng.random() < score
        examples.append(Judged(score, good, good, rng.random() < 0.9, 1.0, 5.0))
    method = curves.area(curves.sweep(examples))
    oracle = curves.area(curves.oracle(examples))
    floor = curves.area([curves.random_routing(examples, s / 100) for s in range(101)])
    assert floor < method < oracle
    noise = [Judged(rng.random(), e.agrees, e.small_correct, e.last_correct, 1.0, 5.0) for e in examples]
    assert curves.area(curves.sweep(noise)) == pytest.approx(floor, abs=0.02)
