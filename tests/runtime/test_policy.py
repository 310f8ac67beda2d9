"""The accept-or-escalate decision."""

from __future__ import annotations

import math

import pytest

from kascade.api.modelcascade import Accept, ConfidenceMethod
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.logprobs import TokenEvidence
from kascade.runtime.policy import Decision, decide, judge, judge_tokens


def test_at_threshold_accepts() -> None:
    assert decide(Accept(threshold=0.6), 0.6) == Decision(
        accept=True, confidence=0.6, threshold=0.6, method=ConfidenceMethod.geometric_mean
    )


def test_just_below_threshold_escalates() -> None:
    decision = decide(Accept(threshold=0.6), math.nextafter(0.6, 0.0))
    assert decision.accept is False
    assert decision.threshold == 0.6


def test_above_threshold_accepts() -> None:
    assert decide(Accept(threshold=0.6), 0.61).accept is True


def test_threshold_bounds() -> None:
    # threshold 0 trusts every answer, even an unscored one; threshold 1 only a certain one
    assert decide(Accept(threshold=0.0), 0.0).accept is True
    assert decide(Accept(threshold=1.0), 1.0).accept is True
    assert decide(Accept(threshold=1.0), 0.999).accept is False


def test_nan_confidence_escalates() -> None:
    assert decide(Accept(threshold=0.0), math.nan).accept is False


def test_decision_carries_the_method() -> None:
    assert decide(Accept(method="entropy", threshold=0.3), 0.5).method is ConfidenceMethod.entropy


def chat_response(*probs: float) -> dict:
    return {
        "choices": [
            {"index": 0, "logprobs": {"content": [{"token": "x", "logprob": math.log(p), "top_logprobs": []} for p in probs]}}
        ]
    }


def test_judge_scores_and_decides() -> None:
    # geometric mean of .5 and .25 is sqrt(.125) ≈ .3536
    response = chat_response(0.5, 0.25)
    accepted = judge(Accept(threshold=0.35), Endpoint.chat, response)
    assert accepted.accept is True
    assert accepted.confidence == pytest.approx(math.sqrt(0.125))
    assert judge(Accept(threshold=0.36), Endpoint.chat, response).accept is False


def test_judge_without_logprobs_escalates() -> None:
    decision = judge(Accept(threshold=0.01), Endpoint.chat, {"choices": [{"index": 0, "logprobs": None}]})
    assert decision.accept is False
    assert decision.confidence == 0.0


def test_judge_classify() -> None:
    response = {"data": [{"index": 0, "label": "a", "probs": [0.8, 0.2], "num_classes": 2}]}
    assert judge(Accept(method="maxProb", threshold=0.8), Endpoint.classify, response).accept is True
    # margin .6 is below .7
    assert judge(Accept(method="classMargin", threshold=0.7), Endpoint.classify, response).accept is False


def test_judge_tokens_for_a_streamed_prefix() -> None:
    tokens = [TokenEvidence(math.log(0.9)), TokenEvidence(math.log(0.4))]
    decision = judge_tokens(Accept(method="minToken", threshold=0.5), tokens)
    assert decision == Decision(accept=False, confidence=pytest.approx(0.4), threshold=0.5, method=ConfidenceMethod.min_token)
    assert judge_tokens(Accept(method="minToken", threshold=0.39), tokens).accept is True
