"""End to end on loopback: the router in front of real `kascade serve` processes serving tiny
models built locally, called with the official `openai` client.

The small tier's confidence is computed here from the logprobs it returns when
called directly; the router must decide against the threshold exactly as that
number says.
"""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from kascade.api.modelcascade import Accept, Task
from kascade.runtime.config import RouterConfig, TierConfig

CHAT = [{"role": "user", "content": "hello there"}]
GREEDY = {"temperature": 0.0, "max_tokens": 6, "seed": 7}


def cascade_config(small_url: str, large_url: str, threshold: float, **router) -> RouterConfig:
    return RouterConfig(
        cascade="tiny-cascade",
        task=router.pop("task", Task.chat),
        tiers=[
            TierConfig(
                name="small",
                served_model="small-model",
                url=small_url,
                accept=Accept(method=router.pop("method", "geometricMean"), threshold=threshold),
            ),
            TierConfig(name="large", served_model="large-model", url=large_url),
        ],
        retry_backoff_seconds=0.0,
        **router,
    )


@pytest.fixture
def tiers(start_shared_model_server, tiny_small_lm_dir, tiny_large_lm_dir):
    """Session-wide servers: tests on them must not kill them."""
    return start_shared_model_server(tiny_small_lm_dir, name="small-model"), start_shared_model_server(
        tiny_large_lm_dir, name="large-model"
    )


@pytest.fixture
def own_tiers(start_model_server, tiny_small_lm_dir, tiny_large_lm_dir):
    """Servers of this test alone, which it may kill."""
    return start_model_server(tiny_small_lm_dir, name="small-model"), start_model_server(
        tiny_large_lm_dir, name="large-model"
    )


def small_confidence(small_url: str) -> float:
    """The geometric-mean confidence of the small model's greedy answer, computed by hand."""
    direct = openai.OpenAI(base_url=small_url, api_key="none").chat.completions.create(
        model="small-model", messages=CHAT, logprobs=True, **GREEDY
    )
    logprobs = [entry.logprob for entry in direct.choices[0].logprobs.content]
    return math.exp(sum(logprobs) / len(logprobs))


def test_the_router_decides_on_the_small_models_real_confidence(tiers, start_router):
    small, large = tiers
    confidence = small_confidence(small.url)
    assert 0 < confidence < 1

    for threshold, expected in [(confidence * 0.99, "small"), (min(confidence * 1.01, 1.0), "large")]:
        router = start_router(cascade_config(small.url, large.url, threshold))
        client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="tiny-cascade", messages=CHAT, **GREEDY)
        answer = raw.parse()
        assert raw.headers["x-kascade-tier"] == expected
        assert answer.model == f"{expected}-model"
        assert answer.choices[0].logprobs is None
        if expected == "small":
            assert float(raw.headers["x-kascade-confidence"]) == pytest.approx(confidence, rel=1e-3)
        books = httpx.get(f"{router.metrics_url}/stats").json()
        assert books["answeredBy"][expected] == 1
        assert books["tiers"]["small"]["calls"] == 1


@pytest.mark.parametrize("threshold", [0.0, 1.0], ids=["small-accepts", "escalates"])
def test_streaming_through_the_cascade_matches_the_tier_answer(tiers, start_router, threshold):
    small, large = tiers
    router = start_router(cascade_config(small.url, large.url, threshold))
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0)
    answering = small if threshold == 0.0 else large

    direct = openai.OpenAI(base_url=answering.url, api_key="none").chat.completions.create(
        model=f"{'small' if threshold == 0.0 else 'large'}-model", messages=CHAT, **GREEDY
    )
    with client.chat.completions.with_streaming_response.create(
        model="tiny-cascade", messages=CHAT, stream=True, **GREEDY
    ) as raw:
        tier = raw.headers["x-kascade-tier"]
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)

    assert tier == ("small" if threshold == 0.0 else "large")
    assert text == direct.choices[0].message.content


def test_completions_cascade_over_real_servers(tiers, start_router):
    small, large = tiers
    router = start_router(cascade_config(small.url, large.url, 1.0))
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0)

    raw = client.completions.with_raw_response.create(model="tiny-cascade", prompt="once upon", logprobs=2, **GREEDY)

    assert raw.headers["x-kascade-tier"] == "large"
    logprobs = raw.parse().choices[0].logprobs
    assert len(logprobs.tokens) == raw.parse().usage.completion_tokens
    assert all(len(top) <= 3 for top in logprobs.top_logprobs)  # two asked for, plus the sampled token


def test_a_small_tier_killed_mid_test_sends_traffic_to_the_large_one(own_tiers, start_router):
    small, large = own_tiers
    router = start_router(cascade_config(small.url, large.url, 0.0, retries=1))
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0)
    first = client.chat.completions.with_raw_response.create(model="tiny-cascade", messages=CHAT, **GREEDY)
    assert first.headers["x-kascade-tier"] == "small"

    small.kill()
    second = client.chat.completions.with_raw_response.create(model="tiny-cascade", messages=CHAT, **GREEDY)

    assert second.headers["x-kascade-tier"] == "large"
    assert second.headers["x-kascade-escalated"] == "true"
    books = httpx.get(f"{router.metrics_url}/stats").json()
    assert books["requests"] == 2 and books["failed"] == 0
    assert books["tiers"]["small"]["errors"] == 2  # the call and its retry
    ready = httpx.get(f"{router.url}/readyz").json()
    assert ready == {"ready": True, "tiers": {"small": False, "large": True}}

    large.kill()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="tiny-cascade", messages=CHAT, **GREEDY)
    assert caught.value.status_code == 503
    assert httpx.get(f"{router.metrics_url}/stats").json()["failed"] == 1


def test_a_classify_cascade_over_real_classifier_servers(start_shared_model_server, tiny_classifier_dir, start_router):
    small = start_shared_model_server(tiny_classifier_dir, name="small-model", task="classify")
    large = start_shared_model_server(tiny_classifier_dir, name="large-model", task="classify")
    direct = httpx.post(f"{small.base_url}/classify", json={"model": "small-model", "input": "a fine day"}).json()
    top = max(direct["data"][0]["probs"])

    for threshold, expected in [(top - 1e-6, "small"), (min(top + 1e-6, 1.0), "large")]:
        router = start_router(cascade_config(small.url, large.url, threshold, task=Task.classify, method="maxProb"))
        response = httpx.post(f"{router.url}/classify", json={"model": "tiny-cascade", "input": "a fine day"})
        assert response.status_code == 200
        assert response.headers["x-kascade-tier"] == expected
        assert response.json()["data"][0]["num_classes"] == 2
