"""Online calibration in a real router: shadow samples off the response path, agreement counts, thresholds that move
without a restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from kascade.api.agreement import AnswerMatcher
from kascade.api.loop import Calibration
from kascade.runtime.config import EscalationLogConfig, ShadowSamplingConfig
from kascade.runtime.escalation.segments import SegmentStore
from kascade.runtime.router import create_router_app
from kascade.runtime.serving import BackgroundServer

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "Capital of France?"}]}


def _sampling(**settings: Any) -> ShadowSamplingConfig:
    return ShadowSamplingConfig(**{"rate": 1.0, "matcher": AnswerMatcher.exact, **settings})


def _stats_when(url: str, condition: Any, seconds: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        stats = httpx.get(f"{url}/stats").json()
        if condition(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def test_accepted_answers_are_asked_of_the_last_tier_too_and_counted_by_score_bin(
    start_upstream: Any, two_tier_config: Any, start_router: Any
) -> None:
    small = start_upstream(model="small-model", tokens=["Paris"], token_prob=0.9)
    large = start_upstream(model="large-model", tokens=["Paris"], delay_seconds=0.5)
    router = start_router(two_tier_config(small.url, large.url, shadow_sampling=_sampling()))
    for _ in range(3):
        response = httpx.post(f"{router.url}/v1/chat/completions", json=CHAT)
        assert response.status_code == 200 and response.headers["x-kascade-tier"] == "small"
        assert response.json()["choices"][0]["message"]["content"] == "Paris"
    # The callers had their answers while the last tier was still thinking about the shadow calls.
    assert httpx.get(f"{router.metrics_url}/stats").json()["shadowCalls"] == 0
    stats = _stats_when(router.metrics_url, lambda s: s["shadowCalls"] == 3)
    assert stats["shadowCalls"] == 3 and large.behaviour.requests == 3
    assert stats["calibrationSamples"] == {"small@0.9": 3} and stats["calibrationAgreed"] == {"small@0.9": 3}
    assert stats["answeredBy"] == {"small": 3, "large": 0}  # shadow calls answer nobody
    assert stats["shadowCost"] > 0 and stats["cost"]["actual"] >= stats["shadowCost"]
    assert stats["tiers"]["large"]["calls"] == 3
    assert stats["baselineTokens"]["shadowAnsweredOutput"] == 3 and stats["baselineTokens"]["shadowLastOutput"] == 3


def test_an_escalated_request_is_a_pair_already_and_a_disagreement_is_counted(
    start_upstream: Any, two_tier_config: Any, start_router: Any
) -> None:
    small = start_upstream(model="small-model", tokens=["Lyon"], token_prob=0.3)  # escalates at 0.5
    large = start_upstream(model="large-model", tokens=["Paris"])
    router = start_router(two_tier_config(small.url, large.url, shadow_sampling=_sampling()))
    response = httpx.post(f"{router.url}/v1/chat/completions", json=CHAT)
    assert response.headers["x-kascade-tier"] == "large"
    stats = _stats_when(router.metrics_url, lambda s: s["calibrationSamples"])  # judged off the response path
    assert stats["calibrationSamples"] == {"small@0.3": 1} and stats["calibrationAgreed"] == {}
    assert stats["shadowCalls"] == 0 and large.behaviour.requests == 1  # no extra call for it


def test_shadow_calls_beyond_the_concurrency_are_skipped_and_counted(
    start_upstream: Any, two_tier_config: Any, start_router: Any
) -> None:
    small = start_upstream(model="small-model", tokens=["Paris"], token_prob=0.9)
    large = start_upstream(model="large-model", tokens=["Paris"], delay_seconds=1.0)
    router = start_router(two_tier_config(small.url, large.url, shadow_sampling=_sampling(concurrency=1)))
    for _ in range(3):
        assert httpx.post(f"{router.url}/v1/chat/completions", json=CHAT).status_code == 200
    stats = _stats_when(router.metrics_url, lambda s: s["shadowCalls"] == 1)
    assert stats["shadowSampling"]["skipped"] == 2 and stats["shadowCalls"] == 1


def test_with_an_escalation_log_a_shadow_sample_is_kept_labelled(
    tmp_path: Path, start_upstream: Any, two_tier_config: Any, start_router: Any
) -> None:
    small = start_upstream(model="small-model", tokens=["Lyon"], token_prob=0.9)
    large = start_upstream(model="large-model", tokens=["Paris"])
    log = EscalationLogConfig(uri=str(tmp_path), flush_seconds=0.05)
    with BackgroundServer(
        create_router_app(two_tier_config(small.url, large.url, shadow_sampling=_sampling(), escalation_log=log))
    ) as router:
        assert httpx.post(f"{router.url}/v1/chat/completions", json=CHAT).headers["x-kascade-tier"] == "small"
        _stats_when(router.metrics_url, lambda s: s["shadowCalls"] == 1)
    (record,) = SegmentStore(str(tmp_path)).records()
    assert record.kind == "shadow" and record.agreed is False
    assert record.answer == "Paris" and [d.text for d in record.declined] == ["Lyon"]
    assert record.tokens is not None  # teacher data too: the last tier's token ids
    from kascade.runtime.escalation.view import log_stats

    stats = log_stats([record])
    assert stats.by_kind == {"shadow": 1} and dict(stats.reasons) == {"shadow sample, disagreed with the last tier": 1}


def test_local_mode_calibrates_in_process_and_the_new_threshold_is_in_force_without_a_restart(
    start_upstream: Any, two_tier_config: Any
) -> None:
    small = start_upstream(model="small-model", tokens=["Paris"], token_prob=0.9)  # scores 0.9
    large = start_upstream(model="large-model", tokens=["Paris"])  # always the same answer
    goal = Calibration(min_agreement=0.9, shadow_sample_rate=1.0, min_samples=40)
    config = two_tier_config(
        small.url,
        large.url,
        accept={"method": "geometricMean", "threshold": 0.95},
        shadow_sampling=_sampling(calibrate_in_process=goal),
    )
    app = create_router_app(config)
    with BackgroundServer(app) as router:
        tiers = [
            httpx.post(f"{router.url}/v1/chat/completions", json=CHAT).headers["x-kascade-tier"] for _ in range(40)
        ]
        assert set(tiers) == {"large"}  # 0.9 < 0.95: everything escalates, and every escalation is a pair
        _stats_when(router.metrics_url, lambda s: s["calibrationSamples"].get("small@0.9") == 40)
        status = app.main.state.router.calibrator.step()
        (tier,) = status.tiers
        assert tier.met and tier.threshold <= 0.9 and tier.samples == 40
        response = httpx.post(f"{router.url}/v1/chat/completions", json=CHAT)
        assert response.headers["x-kascade-tier"] == "small"  # the same process, a bolder threshold
        stats = httpx.get(f"{router.metrics_url}/stats").json()
        assert stats["calibration"]["tiers"][0]["threshold"] == tier.threshold


def test_in_a_three_tier_cascade_every_tier_asked_gives_its_pair(start_upstream: Any, start_router: Any) -> None:
    from kascade.api.modelcascade import Accept, Price
    from kascade.runtime.config import RouterConfig, TierConfig

    small = start_upstream(model="small-model", tokens=["Lyon"], token_prob=0.3)  # declined at 0.5
    medium = start_upstream(model="medium-model", tokens=["Paris"], token_prob=0.9)  # accepted
    large = start_upstream(model="large-model", tokens=["Paris"])
    accept = Accept(method="geometricMean", threshold=0.5)
    config = RouterConfig(
        cascade="demo",
        shadow_sampling=_sampling(),
        retry_backoff_seconds=0.0,
        tiers=[
            TierConfig(name="small", served_model="small-model", url=small.url, accept=accept, price=Price()),
            TierConfig(name="medium", served_model="medium-model", url=medium.url, accept=accept, price=Price()),
            TierConfig(name="large", served_model="large-model", url=large.url, price=Price()),
        ],
    )
    router = start_router(config)
    assert httpx.post(f"{router.url}/v1/chat/completions", json=CHAT).headers["x-kascade-tier"] == "medium"
    stats = _stats_when(router.metrics_url, lambda s: s["shadowCalls"] == 1)
    assert stats["calibrationSamples"] == {"small@0.3": 1, "medium@0.9": 1}
    assert stats["calibrationAgreed"] == {"medium@0.9": 1}  # Lyon is not Paris; the medium tier's Paris is
