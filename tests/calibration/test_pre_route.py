"""skipBelow from a kept-skipped goal: the bound holds over seeded splits, where a point estimate does not."""

from __future__ import annotations

import random

import pytest

from kascade.calibration.pre_route import choose_skip_below


def _synthetic(n: int, seed: int) -> list[tuple[float, bool]]:
    """Keep-probabilities uniform in [0, 1]; the tier keeps a request with probability 0.1 + 0.8 * probability."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        probability = rng.random()
        pairs.append((probability, rng.random() < 0.1 + 0.8 * probability))
    return pairs


def _kept_skipped_share(pairs: list[tuple[float, bool]], skip_below: float) -> float:
    kept = [p for p, k in pairs if k]
    return sum(p < skip_below for p in kept) / len(kept)


def _point_estimate(pairs: list[tuple[float, bool]], allowed: float) -> float:
    """What one does without a bound: the boldest threshold whose in-sample kept-skipped share meets the goal."""
    best = 0.0
    for threshold in sorted({p for p, _ in pairs}):
        if _kept_skipped_share(pairs, threshold) <= allowed:
            best = threshold
        else:
            break
    return best


def test_the_kept_skipped_goal_holds_on_new_data_in_at_least_the_promised_share_of_splits() -> None:
    population = _synthetic(40_000, seed=1)
    goal, confidence = 0.1, 0.9
    rng = random.Random(3)
    held_with_bound = held_with_point = 0
    splits = 400  # the share held is ~0.92 here: 400 splits keep its noise (sd ~0.014) under the margin
    for _ in range(splits):
        calibration = rng.sample(population, 600)
        choice = choose_skip_below(
            [p for p, _ in calibration], [k for _, k in calibration], max_kept_skipped=goal, confidence=confidence
        )
        assert choice.certified and choice.skip_below > 0
        assert choice.bound <= goal
        held_with_bound += _kept_skipped_share(population, choice.skip_below) <= goal
        held_with_point += _kept_skipped_share(population, _point_estimate(calibration, goal)) <= goal
    assert held_with_bound / splits >= confidence
    # Without the bound the same choice fails about half the time: the test can tell the two apart.
    assert held_with_point / splits < 0.75


def test_the_choice_reports_what_it_skips_and_what_it_certified() -> None:
    pairs = _synthetic(2000, seed=3)
    probabilities, kept = [p for p, _ in pairs], [k for _, k in pairs]
    choice = choose_skip_below(probabilities, kept, max_kept_skipped=0.05, confidence=0.95)
    assert choice.certified and choice.reason == ""
    assert choice.kept == sum(kept) and choice.requests == len(pairs)
    assert choice.kept_skipped == sum(p < choice.skip_below for p, k in pairs if k)
    assert choice.skipped_share == pytest.approx(sum(p < choice.skip_below for p in probabilities) / len(pairs))
    assert choice.kept_skipped / choice.kept <= 0.05
    # A bolder goal skips more.
    bolder = choose_skip_below(probabilities, kept, max_kept_skipped=0.2, confidence=0.95)
    assert bolder.skip_below > choice.skip_below and bolder.skipped > choice.skipped


def test_too_few_kept_requests_certify_nothing_and_never_skip() -> None:
    few = _synthetic(40, seed=4)
    choice = choose_skip_below([p for p, _ in few], [k for _, k in few], max_kept_skipped=0.05, confidence=0.95)
    assert not choice.certified and choice.skip_below == 0.0 and choice.skipped == 0
    assert "too few to certify maxKeptSkipped=0.05" in choice.reason
    nothing_kept = choose_skip_below([0.1, 0.2], [False, False], max_kept_skipped=0.05, confidence=0.95)
    assert not nothing_kept.certified and nothing_kept.skip_below == 0.0
    assert "kept none" in nothing_kept.reason


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="probabilities for"):
        choose_skip_below([0.5], [True, False], max_kept_skipped=0.05, confidence=0.95)
    with pytest.raises(ValueError, match="strictly between"):
        choose_skip_below([0.5], [True], max_kept_skipped=0.0, confidence=0.95)
