"""Agreement judged off the response path in a real router: an LLM judge (the last tier, or a judge.url) on real
HTTP, its calls paid and shown apart, and a judge that answers garbage or cannot be reached counted, never waited
for, never taken for agreement."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from kascade.api.agreement import AnswerMatcher
from kascade.api.modelcascade import Price
from kascade.runtime.config import EscalationLogConfig, JudgeConfig, ShadowSamplingConfig
from kascade.runtime.escalation.segments import SegmentStore
from kascade.runtime.router import create_router_app
from kascade.runtime.serving import BackgroundServer, free_port

pytestmark = pytest.mark.slow  # routers and tiers on loopback

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "Capital of France?"}]}
LARGE_PRICE = Price(input_per_million=10.0, output_per_million=20.0)  # tests/runtime/conftest.py's large tier
SMALL_ANSWER = ["The capital", " is", " Paris", "."]
LARGE_ANSWER = ["Paris", " is", " the", " capital", "."]  # the same, in other words


def _judged(*, rate: float = 1.0, **judge: Any) -> ShadowSamplingConfig:
    config = JudgeConfig(**{"model": "large-model", "price": LARGE_PRICE, **judge})
    return ShadowSamplingConfig(rate=rate, matcher=AnswerMatcher.judge, judge=config)


def _stats_when(url: str, condition: Any, seconds: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        stats = httpx.get(f"{url}/stats").json()
        if condition(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def _ask(router: BackgroundServer) -> httpx.Response:
    response = httpx.post(f"{router.url}/v1/chat/completions", json=CHAT, timeout=10.0)
    assert response.status_code == 200
    return response


def test_the_last_tier_judges_a_paraphrase_as_agreement_off_the_response_path(
    start_upstream: Any, start_judging_upstream: Any, two_tier_config: Any, start_router: Any
) -> None:
    small = start_upstream(model="small-model", tokens=SMALL_ANSWER, token_prob=0.9)
    large = start_judging_upstream(model="large-model", tokens=LARGE_ANSWER, judge={"delay_seconds": 0.5})
    router = start_router(two_tier_config(small.url, large.url, shadow_sampling=_judged()))
    for _ in range(3):
        response = _ask(router)
        assert response.headers["x-kascade-tier"] == "small"
        assert response.json()["choices"][0]["message"]["content"] == "The capital is Paris."
    assert httpx.get(f"{router.metrics_url}/stats").json()["judgeCalls"] == 0  # the answers did not wait for the judge
    stats = _stats_when(router.metrics_url, lambda s: s["judgeCalls"] == 3)
    assert stats["calibrationSamples"] == {"small@0.9": 3} and stats["calibrationAgreed"] == {"small@0.9": 3}
    assert stats["judgeFailures"] == 0 and stats["shadowCalls"] == 3
    judge_cost = 3 * (100 * 10.0 + 1 * 20.0) / 1e6  # the judge's usage at the last tier's price
    assert stats["judgeCost"] == pytest.approx(judge_cost)
    assert stats["cost"]["actual"] == pytest.approx(stats["shadowCost"] + judge_cost + 3 * (7 * 1.0 + 4 * 2.0) / 1e6)
    assert stats["tiers"]["large"]["calls"] == 3  # the shadow calls; the judge's are apart
    (question, *_) = large.judge.questions
    assert question["model"] == "large-model" and "The capital is Paris." in question["messages"][1]["content"]
    metrics = httpx.get(f"{router.metrics_url}/metrics").text
    assert 'kascade_judge_questions_total{cascade="demo",outcome="verdict"} 3.0' in metrics


def test_an_escalated_pair_is_judged_too_and_a_no_is_a_disagreement(
    start_upstream: Any, start_judging_upstream: Any, two_tier_config: Any, start_router: Any
) -> None:
    small = start_upstream(model="small-model", tokens=["Lyon"], token_prob=0.3)  # escalates at 0.5
    large = start_judging_upstream(
        model="large-model", tokens=["Paris"], judge={"alternatives": {"no": 0.8, "yes": 0.2}}
    )
    router = start_router(two_tier_config(small.url, large.url, shadow_sampling=_judged()))
    assert _ask(router).headers["x-kascade-tier"] == "large"
    stats = _stats_when(router.metrics_url, lambda s: s["judgeCalls"] == 1)
    assert stats["calibrationSamples"] == {"small@0.3": 1} and stats["calibrationAgreed"] == {}
    assert stats["shadowCalls"] == 0 and large.behaviour.requests == 1 and len(large.judge.questions) == 1


@pytest.mark.parametrize(
    "judge",
    [{"alternatives": {"Paris": 0.9, "Lyon": 0.1}}, {"alternatives": None}, {"fail_status": 503}],
    ids=["garbage", "no-logprobs", "down"],
)
def test_a_judge_without_a_verdict_is_counted_and_never_agreement(
    judge: dict[str, Any], start_upstream: Any, start_judging_upstream: Any, two_tier_config: Any, start_router: Any
) -> None:
    small = start_upstream(model="small-model", tokens=["Lyon"], token_prob=0.3)
    large = start_judging_upstream(model="large-model", tokens=["Paris"], judge=judge)
    router = start_router(two_tier_config(small.url, large.url, shadow_sampling=_judged()))
    for _ in range(2):
        assert _ask(router).json()["choices"][0]["message"]["content"] == "Paris"
    stats = _stats_when(router.metrics_url, lambda s: s["judgeFailures"] == 2)
    assert stats["judgeCalls"] == 2 and stats["judgeFailures"] == 2
    assert stats["calibrationSamples"] == {} and stats["shadowSampling"]["unjudged"] == 2


def test_an_unreachable_judge_url_is_counted_and_the_answers_flow(
    start_upstream: Any, two_tier_config: Any, start_router: Any
) -> None:
    small = start_upstream(model="small-model", tokens=["Paris"], token_prob=0.9)
    large = start_upstream(model="large-model", tokens=["Paris"])
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    router = start_router(
        two_tier_config(small.url, large.url, shadow_sampling=_judged(url=nowhere, model="judge-model"))
    )
    for _ in range(3):
        assert _ask(router).headers["x-kascade-tier"] == "small"
    stats = _stats_when(router.metrics_url, lambda s: s["judgeFailures"] == 3)
    assert stats["judgeFailures"] == 3 and stats["calibrationSamples"] == {} and stats["judgeCost"] == 0
    assert stats["shadowCalls"] == 3  # the last tier still answered the shadow calls


def test_an_external_judge_is_asked_with_its_model_and_key(
    tmp_path: Path, start_upstream: Any, start_judging_upstream: Any, two_tier_config: Any, start_router: Any
) -> None:
    small = start_upstream(model="small-model", tokens=["Paris"], token_prob=0.9)
    large = start_upstream(model="large-model", tokens=["Paris!"])
    judge = start_judging_upstream(model="judge-model")
    key = tmp_path / "judge-key"
    key.write_text("sk-judge\n")
    price = Price(input_per_million=1.0, output_per_million=1.0)
    sampling = _judged(url=judge.url, model="judge-model", api_key_file=str(key), price=price)
    router = start_router(two_tier_config(small.url, large.url, shadow_sampling=sampling))
    _ask(router)
    stats = _stats_when(router.metrics_url, lambda s: s["judgeCalls"] == 1)
    assert stats["calibrationAgreed"] == {"small@0.9": 1} and stats["judgeCost"] == pytest.approx(101 / 1e6)
    (question,) = judge.judge.questions
    assert question["model"] == "judge-model"
    assert large.behaviour.requests == 1  # the shadow call only: the last tier judged nothing


def test_judge_calls_beyond_the_concurrency_are_skipped_and_counted(
    start_upstream: Any, start_judging_upstream: Any, two_tier_config: Any, start_router: Any
) -> None:
    small = start_upstream(model="small-model", tokens=["Lyon"], token_prob=0.3)
    large = start_judging_upstream(model="large-model", tokens=["Paris"], judge={"delay_seconds": 1.0})
    router = start_router(two_tier_config(small.url, large.url, shadow_sampling=_judged(concurrency=1)))
    for _ in range(3):
        _ask(router)
    stats = _stats_when(router.metrics_url, lambda s: s["judgeCalls"] == 1)
    assert stats["judgeSkipped"] == 2 and stats["judgeCalls"] == 1
    assert sum(stats["calibrationSamples"].values()) == 1


def test_a_shadow_record_is_labelled_by_the_judges_verdict_and_kept_only_with_one(
    tmp_path: Path, start_upstream: Any, start_judging_upstream: Any, two_tier_config: Any
) -> None:
    small = start_upstream(model="small-model", tokens=SMALL_ANSWER, token_prob=0.9)
    large = start_judging_upstream(model="large-model", tokens=LARGE_ANSWER)
    log = EscalationLogConfig(uri=str(tmp_path), flush_seconds=0.05)
    config = two_tier_config(small.url, large.url, shadow_sampling=_judged(), escalation_log=log)
    with BackgroundServer(create_router_app(config)) as router:
        _ask(router)
        _stats_when(router.metrics_url, lambda s: s["judgeCalls"] == 1)
        large.judge.alternatives = {"Paris": 1.0}  # no verdict: the next sample has no label
        _ask(router)
        _stats_when(router.metrics_url, lambda s: s["judgeCalls"] == 2)
    (record,) = SegmentStore(str(tmp_path)).records()
    assert record.kind == "shadow" and record.agreed is True  # "yes" on a paraphrase, where exact says no
    assert record.answer == "Paris is the capital." and [d.text for d in record.declined] == ["The capital is Paris."]
