"""The promotion gate: a gain overall and no slice worse beyond the tolerance, or the student is not promoted."""

from __future__ import annotations

from kascade.distillation.gate import GateSettings, promotion_gate

GATE = GateSettings(min_agreement_gain=0.01, slice_tolerance=0.02, min_slice_examples=20)


def figures(agreement: float, slices: dict[str, list[int]]) -> dict:
    return {"answer_agreement": agreement, "examples": sum(n for _, n in slices.values()), "slices": slices}


def test_a_gain_with_no_slice_worse_passes() -> None:
    before = figures(0.70, {"label=a": [35, 50], "label=b": [35, 50]})
    after = figures(0.80, {"label=a": [40, 50], "label=b": [40, 50]})
    verdict = promotion_gate(before, after, GATE)
    assert verdict["passed"] and verdict["reasons"] == [] and abs(verdict["gain"] - 0.10) < 1e-12
    assert verdict["slices"]["label=a"] == {"examples": 50, "before": 0.7, "after": 0.8, "change": 0.8 - 0.7}


def test_an_aggregate_gain_that_hides_a_slices_regression_fails_and_says_which() -> None:
    before = figures(0.70, {"label=a": [20, 50], "label=b": [50, 50]})
    after = figures(0.75, {"label=a": [35, 50], "label=b": [40, 50]})  # a: +0.30, b: -0.20
    verdict = promotion_gate(before, after, GATE)
    assert not verdict["passed"]
    (reason,) = verdict["reasons"]
    assert reason.startswith("slice label=b (50 examples) lost -0.2000")


def test_too_small_a_gain_fails_and_small_slices_are_shown_but_not_judged() -> None:
    before = figures(0.70, {"label=a": [7, 10], "label=b": [63, 90]})
    after = figures(0.705, {"label=a": [2, 10], "label=b": [68, 90]})  # a lost 0.5, but has 10 examples
    verdict = promotion_gate(before, after, GATE)
    assert not verdict["passed"] and len(verdict["reasons"]) == 1 and "gained +0.0050" in verdict["reasons"][0]
    assert abs(verdict["slices"]["label=a"]["change"] + 0.5) < 1e-12


def test_nothing_to_compare_is_a_failure() -> None:
    verdict = promotion_gate({}, {}, GATE)
    assert not verdict["passed"] and verdict["reasons"] == ["no held-out answers to compare"]
