"""The accept-or-escalate decision, and the cascade's step after each tier."""

from __future__ import annotations

import math

import pytest

from kascade.api.modelcascade import Accept, ConfidenceMethod, OnTierError
from kascade.runtime.engines.base import Endpoint, TierError, TierErrorKind
from kascade.runtime.logprobs import TokenEvidence
from kascade.runtime.scoring.policy import Decision, decide, judge, judge_tokens
from kascade.runtime.tier_step import Failure, Reason, Step, Verdict, failure_of, next_step, retry_delay


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
            {
                "index": 0,
                "logprobs": {"content": [{"token": "x", "logprob": math.log(p), "top_logprobs": []} for p in probs]},
            }
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
    assert decision == Decision(
        accept=False, confidence=pytest.approx(0.4), threshold=0.5, method=ConfidenceMethod.min_token
    )
    assert judge_tokens(Accept(method="minToken", threshold=0.39), tokens).accept is True


# -- one step of the cascade: accept, escalate or fail -----------------------------------


def _next(
    *, is_last: bool = False, fail_policy: bool = False, accept: bool | None = None, failed: bool = False
) -> Step:
    decision = None if accept is None else decide(Accept(threshold=0.5), 0.9 if accept else 0.1)
    on_tier_error = OnTierError.fail if fail_policy else OnTierError.escalate
    return next_step(is_last=is_last, on_tier_error=on_tier_error, decision=decision, failed=failed)


def test_a_confident_tier_is_accepted_and_an_unsure_one_escalates() -> None:
    assert _next(accept=True) == Step(Verdict.accept, Reason.confident)
    assert _next(accept=False) == Step(Verdict.escalate, Reason.unsure)


def test_the_last_tier_answers_unscored() -> None:
    assert _next(is_last=True) == Step(Verdict.accept, Reason.last_tier)


def test_a_failed_tier_escalates_or_fails_by_policy_and_the_last_always_fails() -> None:
    assert _next(failed=True) == Step(Verdict.escalate, Reason.tier_failed)
    assert _next(failed=True, fail_policy=True) == Step(Verdict.fail, Reason.fail_on_tier_error)
    assert _next(failed=True, is_last=True) == Step(Verdict.fail, Reason.last_tier_failed)


def test_an_unscored_tier_other_than_the_last_is_a_bug() -> None:
    with pytest.raises(ValueError, match="scored"):
        _next()


def test_a_failure_passes_a_4xx_on_and_maps_the_rest_to_gateway_statuses() -> None:
    refused = TierError(TierErrorKind.client, "too long", status=400, body={"error": {"message": "too long"}})
    assert failure_of("large", refused) == Failure(400, "tier 'large' refused the request: too long", refused.body)
    assert failure_of("large", TierError(TierErrorKind.timeout, "slow")).status == 504
    assert failure_of("large", TierError(TierErrorKind.unavailable, "down")).status == 503
    assert failure_of("large", TierError(TierErrorKind.server, "broken")).status == 502


def test_retries_back_off_doubling_until_the_budget_is_spent() -> None:
    down = TierError(TierErrorKind.unavailable, "down")
    delays = [retry_delay(down, attempt, retries=3, backoff_seconds=0.1) for attempt in range(4)]
    assert delays == [0.1, 0.2, 0.4, None]
    assert retry_delay(TierError(TierErrorKind.client, "bad", status=400), 0, retries=3, backoff_seconds=0.1) is None
