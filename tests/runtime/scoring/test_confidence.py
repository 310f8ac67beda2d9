"""Confidence scores on hand-computed values, edge cases and arbitrary logprobs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kascade.api.modelcascade import Accept, ConfidenceMethod
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.logprobs import TokenEvidence
from kascade.runtime.scoring.confidence import (
    CLASS_SCORERS,
    TOKEN_SCORERS,
    required_top_logprobs,
    score,
    score_class_margin,
    score_entropy,
    score_geometric_mean,
    score_margin,
    score_max_prob,
    score_min_token_prob,
    score_quantile,
    score_tokens,
)

ln = math.log
NEG_INF = -math.inf


def chosen(*probs: float) -> list[TokenEvidence]:
    """Evidence with chosen-token probabilities only."""
    return [TokenEvidence(ln(p) if p > 0 else NEG_INF) for p in probs]


def test_geometric_mean() -> None:
    # exp((ln .5 + ln .25) / 2) = sqrt(.5 * .25) = sqrt(.125)
    assert score_geometric_mean(chosen(0.5, 0.25)) == pytest.approx(math.sqrt(0.125))
    assert score_geometric_mean(chosen(0.8)) == pytest.approx(0.8)
    assert score_geometric_mean(chosen(1.0, 1.0)) == 1.0


def test_min_token_prob() -> None:
    assert score_min_token_prob(chosen(0.5, 0.25, 0.9)) == pytest.approx(0.25)
    assert score_min_token_prob(chosen(0.7)) == pytest.approx(0.7)


def test_quantile_interpolates_linearly() -> None:
    tokens = chosen(0.5, 0.25, 1.0, 0.75)
    # sorted .25 .5 .75 1; q=.1 → position .3 → .25 + .3 * (.5 - .25) = .325
    assert score_quantile(tokens, 0.1) == pytest.approx(0.325)
    # q=.5 → position 1.5 → (.5 + .75) / 2
    assert score_quantile(tokens, 0.5) == pytest.approx(0.625)
    assert score_quantile(tokens, 0.0) == pytest.approx(0.25)
    assert score_quantile(tokens, 1.0) == pytest.approx(1.0)
    assert score_quantile(chosen(0.4), 0.1) == pytest.approx(0.4)


@given(
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=30),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_quantile_matches_numpy(probs: list[float], q: float) -> None:
    numpy = pytest.importorskip("numpy")
    tokens = [TokenEvidence(math.log(p) if p > 0 else NEG_INF) for p in probs]
    expected = float(numpy.quantile([math.exp(t.logprob) for t in tokens], q))
    assert score_quantile(tokens, q) == pytest.approx(expected, abs=1e-12)


def test_margin_counts_the_chosen_token_once() -> None:
    tokens = [
        # chosen .6 is also the top entry: p1 - p2 = .6 - .3
        TokenEvidence(ln(0.6), (ln(0.6), ln(0.3), ln(0.1))),
        # chosen .2 was not the likeliest: the distribution's margin .7 - .2 still counts
        TokenEvidence(ln(0.2), (ln(0.7), ln(0.2))),
    ]
    assert score_margin(tokens) == pytest.approx((0.3 + 0.5) / 2)


def test_margin_single_candidate_and_chosen_outside_the_top() -> None:
    assert score_margin([TokenEvidence(ln(0.9))]) == pytest.approx(0.9)
    assert score_margin([TokenEvidence(ln(0.9), (ln(0.9),))]) == pytest.approx(0.9)
    # sampled outside a top-1 list: candidates .5 and .05
    assert score_margin([TokenEvidence(ln(0.05), (ln(0.5),))]) == pytest.approx(0.45)
    # a tie among the top two is no margin at all
    assert score_margin([TokenEvidence(ln(0.4), (ln(0.4), ln(0.4)))]) == pytest.approx(0.0)


def test_entropy() -> None:
    # uniform over 4: normalised entropy 1 → confidence 0
    assert score_entropy([TokenEvidence(ln(0.25), (ln(0.25),) * 4)]) == pytest.approx(0.0)
    # a single candidate has no uncertainty → 1
    assert score_entropy([TokenEvidence(ln(0.3))]) == pytest.approx(1.0)
    assert score_entropy([TokenEvidence(ln(0.3), (ln(0.3),))]) == pytest.approx(1.0)
    # top (.5, .25) renormalised to (2/3, 1/3): H / ln 2
    two = -(2 / 3 * ln(2 / 3) + 1 / 3 * ln(1 / 3)) / ln(2)
    assert score_entropy([TokenEvidence(ln(0.5), (ln(0.5), ln(0.25)))]) == pytest.approx(1 - two)
    # mean over positions: (two + 0) / 2
    mixed = [TokenEvidence(ln(0.5), (ln(0.5), ln(0.25))), TokenEvidence(ln(0.9))]
    assert score_entropy(mixed) == pytest.approx(1 - two / 2)


def test_entropy_of_a_certain_position_with_impossible_alternatives() -> None:
    # (1, 0): no entropy although k = 2
    assert score_entropy([TokenEvidence(0.0, (0.0, NEG_INF))]) == pytest.approx(1.0)
    # all alternatives impossible: nothing known, the maximum entropy
    assert score_entropy([TokenEvidence(NEG_INF, (NEG_INF, NEG_INF))]) == pytest.approx(0.0)


def test_classify_scores() -> None:
    assert score_max_prob([0.7, 0.2, 0.1]) == pytest.approx(0.7)
    assert score_class_margin([0.2, 0.7, 0.1]) == pytest.approx(0.5)
    assert score_class_margin([1.0]) == pytest.approx(1.0)
    assert score_class_margin([0.5, 0.5]) == pytest.approx(0.0)
    assert score_max_prob([0.6]) == pytest.approx(0.6)


TOKEN_FUNCTIONS = [
    score_geometric_mean,
    score_min_token_prob,
    lambda tokens: score_quantile(tokens, 0.1),
    score_margin,
    score_entropy,
]


@pytest.mark.parametrize("function", TOKEN_FUNCTIONS)
def test_no_evidence_scores_zero(function) -> None:
    assert function([]) == 0.0


def test_no_class_probs_scores_zero() -> None:
    assert score_max_prob([]) == 0.0
    assert score_class_margin([]) == 0.0


def test_minus_infinity_is_probability_zero() -> None:
    tokens = chosen(0.9, 0.0)
    assert score_geometric_mean(tokens) == 0.0
    assert score_min_token_prob(tokens) == 0.0
    assert score_quantile(tokens, 0.1) == pytest.approx(0.09)
    assert score_margin([TokenEvidence(NEG_INF)]) == 0.0


def test_float_error_is_clamped() -> None:
    # Engines occasionally report a logprob a hair above 0.
    tokens = [TokenEvidence(1e-7, (1e-7,))]
    for function in TOKEN_FUNCTIONS:
        assert 0.0 <= function(tokens) <= 1.0
    assert score_geometric_mean(tokens) == 1.0
    assert score_max_prob([1.0000001]) == 1.0
    assert score_class_margin([1.0000001, -1e-9]) == 1.0


def test_huge_negative_logprobs_do_not_overflow() -> None:
    assert score_geometric_mean([TokenEvidence(-1e308), TokenEvidence(-1e308)]) == 0.0


logprobs = st.one_of(
    st.floats(max_value=0.0, allow_nan=False),  # -inf included
    st.floats(min_value=0.0, max_value=1e-6),  # engine float error above 0
    st.just(math.nan),
)
evidence = st.builds(TokenEvidence, logprobs, st.lists(logprobs, max_size=6).map(tuple))


@given(st.lists(evidence, max_size=20), st.floats(min_value=0.0, max_value=1.0))
def test_every_token_score_stays_in_the_unit_interval(tokens: list[TokenEvidence], q: float) -> None:
    for value in (
        score_geometric_mean(tokens),
        score_min_token_prob(tokens),
        score_quantile(tokens, q),
        score_margin(tokens),
        score_entropy(tokens),
    ):
        assert 0.0 <= value <= 1.0


@given(st.lists(st.one_of(st.floats(), st.floats(min_value=0.0, max_value=1.0)), max_size=10))
def test_every_class_score_stays_in_the_unit_interval(probs: list[float]) -> None:
    assert 0.0 <= score_max_prob(probs) <= 1.0
    assert 0.0 <= score_class_margin(probs) <= 1.0


def test_registries_cover_every_method() -> None:
    # learned is the one method of both tasks; it reads features, not a registry scorer.
    assert set(TOKEN_SCORERS) | set(CLASS_SCORERS) | {ConfidenceMethod.learned} == set(ConfidenceMethod)
    assert not set(TOKEN_SCORERS) & set(CLASS_SCORERS)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (ConfidenceMethod.geometric_mean, 0),
        (ConfidenceMethod.min_token, 0),
        (ConfidenceMethod.quantile, 0),
        (ConfidenceMethod.margin, 2),
        (ConfidenceMethod.entropy, 5),
        (ConfidenceMethod.max_prob, 0),
        (ConfidenceMethod.class_margin, 0),
    ],
)
def test_required_top_logprobs(method: ConfidenceMethod, expected: int) -> None:
    assert required_top_logprobs(method) == expected


def chat_response(*entries: tuple[float, list[float]]) -> dict:
    return {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "..."},
                "logprobs": {
                    "content": [
                        {
                            "token": f"t{i}",
                            "logprob": lp,
                            "top_logprobs": [{"token": f"a{j}", "logprob": t} for j, t in enumerate(top)],
                        }
                        for i, (lp, top) in enumerate(entries)
                    ]
                },
            }
        ]
    }


def test_score_dispatches_on_the_method() -> None:
    response = chat_response((ln(0.5), [ln(0.5), ln(0.25)]), (ln(0.25), [ln(0.5), ln(0.25)]))
    assert score(Accept(method="geometricMean", threshold=0.5), Endpoint.chat, response) == pytest.approx(
        math.sqrt(0.125)
    )
    assert score(Accept(method="minToken", threshold=0.5), Endpoint.chat, response) == pytest.approx(0.25)
    # two tokens .5 and .25, q = .5 → .375
    assert score(Accept(method="quantile", threshold=0.5, quantile=0.5), Endpoint.chat, response) == pytest.approx(
        0.375
    )
    assert score(Accept(method="margin", threshold=0.5), Endpoint.chat, response) == pytest.approx(0.25)


def test_score_of_a_completion_response() -> None:
    response = {
        "choices": [
            {
                "index": 0,
                "logprobs": {"tokens": ["a", "b"], "token_logprobs": [ln(0.5), ln(0.25)], "top_logprobs": [None, None]},
            }
        ]
    }
    assert score(Accept(threshold=0.5), Endpoint.completion, response) == pytest.approx(math.sqrt(0.125))


def test_score_of_a_classify_response() -> None:
    response = {"data": [{"index": 0, "label": "pos", "probs": [0.1, 0.7, 0.2], "num_classes": 3}]}
    assert score(Accept(method="maxProb", threshold=0.5), Endpoint.classify, response) == pytest.approx(0.7)
    assert score(Accept(method="classMargin", threshold=0.5), Endpoint.classify, response) == pytest.approx(0.5)


def test_score_without_evidence_is_zero() -> None:
    assert score(Accept(threshold=0.5), Endpoint.chat, {"choices": [{"index": 0, "logprobs": None}]}) == 0.0
    assert score(Accept(method="maxProb", threshold=0.5), Endpoint.classify, {}) == 0.0
    # a generative method on a classify answer finds no tokens
    assert score(Accept(threshold=0.5), Endpoint.classify, {"data": [{"probs": [1.0]}]}) == 0.0


def test_score_tokens_uses_the_accept_rule() -> None:
    tokens = chosen(0.5, 0.25)
    assert score_tokens(Accept(method="minToken", threshold=0.1), tokens) == pytest.approx(0.25)
    assert score_tokens(Accept(method="quantile", threshold=0.1, quantile=0.5), tokens) == pytest.approx(0.375)


def test_score_tokens_refuses_classify_methods() -> None:
    with pytest.raises(ValueError, match="maxProb"):
        score_tokens(Accept(method="maxProb", threshold=0.5), chosen(0.5))
