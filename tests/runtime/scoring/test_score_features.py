"""The learned score's features and its logistic model, as the router computes them."""

from __future__ import annotations

import math

import pytest

from kascade.api.modelcascade import Accept, LearnedScore, ScoreFeature
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.logprobs import TokenEvidence
from kascade.runtime.scoring.confidence import score, score_class_probs, score_tokens
from kascade.runtime.scoring.features import class_features, learned_score, token_features


def test_token_features_by_hand() -> None:
    tokens = [TokenEvidence(math.log(0.5), (math.log(0.5), math.log(0.25))), TokenEvidence(math.log(1.0), ())]
    features = token_features(tokens, prompt_tokens=9)
    assert features[ScoreFeature.min_prob] == pytest.approx(0.5)
    assert features[ScoreFeature.mean_prob] == pytest.approx(0.75)
    assert features[ScoreFeature.prob_quantile_50] == pytest.approx(0.75)
    assert features[ScoreFeature.mean_logprob] == pytest.approx(math.log(0.5) / 2)
    assert features[ScoreFeature.mean_margin] == pytest.approx((0.25 + 1.0) / 2)
    assert features[ScoreFeature.log_answer_tokens] == pytest.approx(math.log(3))
    assert features[ScoreFeature.log_prompt_tokens] == pytest.approx(math.log(10))
    empty = token_features([], prompt_tokens=0)
    assert empty[ScoreFeature.min_prob] == 0.0 and empty[ScoreFeature.mean_entropy] == 1.0


def test_class_features_by_hand() -> None:
    features = class_features([0.7, 0.2, 0.1], prompt_tokens=0)
    assert features[ScoreFeature.max_prob] == pytest.approx(0.7)
    assert features[ScoreFeature.class_margin] == pytest.approx(0.5)
    assert 0 < features[ScoreFeature.label_entropy] < 1


def test_the_learned_score_is_a_sigmoid_of_the_weighted_features() -> None:
    params = LearnedScore(features=["minProb", "logAnswerTokens"], weights=[4.0, -1.0], bias=-1.0)
    tokens = [TokenEvidence(math.log(0.5))]
    z = -1.0 + 4.0 * 0.5 - 1.0 * math.log(2)
    accept = Accept(method="learned", threshold=0.5, learned=params)
    assert score_tokens(accept, tokens) == pytest.approx(1 / (1 + math.exp(-z)))
    assert learned_score(LearnedScore(features=["minProb"], weights=[-1e6]), {ScoreFeature.min_prob: 1.0}) == 0.0
    assert score_tokens(accept, []) == 0.0


def test_the_router_scores_a_response_with_the_learned_rule() -> None:
    params = LearnedScore(features=["maxProb", "logPromptTokens"], weights=[2.0, 0.5], bias=-1.0)
    accept = Accept(method="learned", threshold=0.5, learned=params)
    response = {"data": [{"index": 0, "label": "a", "probs": [0.8, 0.2]}], "usage": {"prompt_tokens": 3}}
    expected = 1 / (1 + math.exp(-(-1.0 + 2.0 * 0.8 + 0.5 * math.log(4))))
    assert score(accept, Endpoint.classify, response) == pytest.approx(expected)
    assert score_class_probs(accept, [0.8, 0.2], prompt_tokens=3) == pytest.approx(expected)
