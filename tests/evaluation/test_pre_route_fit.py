"""Fitting the pre-route score: a separable set is told apart, skipBelow is certified, bad parameters are refused."""

from __future__ import annotations

import base64
import random

import pytest
from pydantic import ValidationError

from kascade.api.pre_route import PRE_ROUTE_WEIGHTS_PER_DIMENSION, PreRoute
from kascade.evaluation.pre_route_fit import (
    KeptPrompts,
    fit_pre_route,
    fit_weights,
    keep_probabilities,
    prompt_texts,
    request_body,
    split_fit_and_choice,
)
from kascade.evaluation.records import Example
from kascade.runtime.scoring.pre_route import PreRouteScorer

_WORDS = ["apple", "river", "stone", "cloud", "green", "quiet", "paper", "light", "sharp", "ocean"]


def _separable(n: int, seed: int) -> KeptPrompts:
    """Kept: a word to translate; declined: the gcd of two large numbers (what a small model gets wrong)."""
    rng = random.Random(seed)
    texts, kept = [], []
    for _ in range(n):
        if rng.random() < 0.4:
            texts.append(f"user: Translate the word {rng.choice(_WORDS)} into French.")
            kept.append(True)
        else:
            texts.append(f"user: What is the greatest common divisor of {rng.randint(10**5, 10**6)} and 84?")
            kept.append(False)
    return KeptPrompts(tuple(texts), tuple(kept))


def test_a_separable_set_reaches_a_high_held_out_auroc_and_a_certified_skip() -> None:
    fitted = fit_pre_route(
        _separable(200, seed=1), _separable(400, seed=2), _separable(300, seed=3), dimensions=1024, source="synthetic"
    )
    assert fitted.held_out is not None and fitted.held_out.auroc is not None
    assert fitted.held_out.auroc > 0.99
    assert fitted.choice.certified and fitted.pre_route.skip_below == fitted.choice.skip_below > 0
    # Nearly every declined prompt is skipped, and the kept ones are not.
    assert fitted.held_out.skipped >= 0.9 * (fitted.held_out.requests - fitted.held_out.kept)
    assert fitted.held_out.kept_skipped <= 0.05 * fitted.held_out.kept
    record = fitted.pre_route.fitted
    assert record is not None and record.examples == 200 and record.source == "synthetic"
    assert record.held_out_auroc == pytest.approx(fitted.held_out.auroc, abs=1e-4)
    assert (
        record.kept_skipped_bound == pytest.approx(fitted.choice.bound, abs=1e-4) and record.kept_skipped_bound < 0.05
    )


def test_the_router_scores_a_request_as_the_fit_did() -> None:
    fitted = fit_pre_route(_separable(200, seed=1), _separable(200, seed=2), dimensions=256)
    example = Example(id="1", messages=({"role": "user", "content": "Translate the word stone into French."},))
    (text,) = prompt_texts([example])
    scorer = PreRouteScorer(fitted.pre_route)
    assert scorer.probability(request_body(example)) == keep_probabilities(fitted.pre_route, [text])[0]
    assert not scorer.skips(scorer.probability(request_body(example)))
    # The manifest's form of the result reads back as the same parameters.
    again = PreRoute.model_validate(fitted.pre_route.model_dump(mode="json", by_alias=True))
    assert again == fitted.pre_route


def test_one_class_only_gives_a_constant_score_and_too_few_kept_never_skip() -> None:
    data = KeptPrompts(("user: a", "user: b", "user: c"), (False, False, False))
    weights, bias = fit_weights(data, dimensions=64)
    assert weights == [0.0] * 64 and bias < -10
    fitted = fit_pre_route(_separable(100, seed=1), _separable(20, seed=2), dimensions=64)
    assert not fitted.choice.certified and fitted.pre_route.skip_below == 0.0
    assert fitted.pre_route.fitted is not None and fitted.pre_route.fitted.kept_skipped_bound is None
    with pytest.raises(ValueError, match="at least one prompt"):
        fit_weights(KeptPrompts((), ()))


def test_the_split_is_stable_and_disjoint() -> None:
    keys = [f"id-{i}" for i in range(1000)]
    fit, choose = split_fit_and_choice(keys)
    assert not set(fit) & set(choose) and len(fit) + len(choose) == 1000
    assert 400 < len(fit) < 600
    assert split_fit_and_choice(list(reversed(keys)))[0] == sorted(999 - i for i in fit)


def test_weights_whose_count_is_not_the_dimensions_are_refused() -> None:
    with pytest.raises(ValidationError, match="got 32 values for 64 dimensions"):
        PreRoute(dimensions=64, weights=PreRoute.encode_weights([0.0] * 32), bias=0.0, skip_below=0.1)
    with pytest.raises(ValidationError, match="base64"):
        PreRoute(dimensions=64, weights="not base64!", bias=0.0, skip_below=0.1)
    infinite = base64.b64encode(b"\x00\x00\x80\x7f" * 64).decode()
    with pytest.raises(ValidationError) as refused:
        PreRoute(dimensions=64, weights=infinite, bias=0.0, skip_below=0.1)
    assert PRE_ROUTE_WEIGHTS_PER_DIMENSION in str(refused.value)
    with pytest.raises(ValueError, match="prompts for"):
        KeptPrompts(("a",), (True, False))
