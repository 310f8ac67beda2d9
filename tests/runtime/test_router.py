"""The router in front of fixed-answer tiers on loopback, called with the official `openai` client.

The fixed tiers put the small tier's confidence exactly where a test wants it,
so the escalation decision can be checked against the threshold.
"""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from kascade.api.modelcascade import Accept, OnTierError, Streaming, Task
from kascade.runtime.config import RouterConfig, TierConfig

CHAT = [{"role": "user", "content": "Say hello"}]


def client_for(router, api_key: str = "none", **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key=api_key, max_retries=0, **kwargs)


def stats(router) -> dict:
    return httpx.get(f"{router.metrics_url}/stats").json()


def test_a_confident_small_tier_answers_and_says_so(start_upstream, start_router, two_tier_config):
    small = start_upstream(token_prob=0.9, tokens=["Hi", "!"])
    large = start_upstream(tokens=["Hello", " there"])
    router = start_router(two_tier_config(small.url, large.url))

    raw = client_for(router).chat.completions.with_raw_response.create(model="demo", messages=CHAT)
    completion = raw.parse()

    assert completion.choices[0].message.content == "Hi!"
    assert completion.model == "small-model"
    assert raw.headers["x-kascade-tier"] == "small"
    assert raw.headers["x-kascade-escalated"] == "false"
    assert float(raw.headers["x-kascade-confidence"]) == pytest.approx(0.9)
    assert completion.choices[0].logprobs is None  # the router asked for them, the caller did not
    assert large.behaviour.requests == 0
    assert small.behaviour.last_body["logprobs"] is True
    assert small.behaviour.last_body["model"] == "small-model"


def test_an_unsure_small_tier_escalates_and_both_calls_are_paid(start_upstream, start_router, two_tier_config):
    small = start_upstream(token_prob=0.3, tokens=["Hm"], prompt_tokens=10)
    large = start_upstream(tokens=["Hello", " there"], prompt_tokens=10)
    router = start_router(two_tier_config(small.url, large.url))

    raw = client_for(router).chat.completions.with_raw_response.create(model="demo", messages=CHAT)

    assert raw.parse().choices[0].message.content == "Hello there"
    assert raw.parse().model == "large-model"
    assert raw.headers["x-kascade-tier"] == "large"
    assert raw.headers["x-kascade-escalated"] == "true"
    assert raw.headers["x-kascade-trail"] == "small=0.3000,large"  # why it escalated
    assert raw.parse().usage.completion_tokens == 2  # usage belongs to the answering tier
    books = stats(router)
    assert books["answeredBy"] == {"small": 0, "large": 1}
    assert books["escalations"] == 1
    assert books["tiers"]["small"]["calls"] == 1
    small_cost = (10 * 1.0 + 1 * 2.0) / 1e6
    large_cost = (10 * 10.0 + 2 * 20.0) / 1e6
    assert books["cost"]["actual"] == pytest.approx(small_cost + large_cost)
    assert books["cost"]["baseline"] == pytest.approx(large_cost)


@pytest.mark.parametrize(
    ("threshold", "tier"),
    [(0.5 - 1e-9, "small"), (0.5, "small"), (0.5 + 1e-9, "large")],
    ids=["below", "at", "above"],
)
def test_the_threshold_decides_at_the_boundary(start_upstream, start_router, two_tier_config, threshold, tier):
    small = start_upstream(token_prob=0.5)
    large = start_upstream()
    config = two_tier_config(small.url, large.url, accept=Accept(method="geometricMean", threshold=threshold))
    router = start_router(config)

    raw = client_for(router).chat.completions.with_raw_response.create(model="demo", messages=CHAT)

    assert raw.headers["x-kascade-tier"] == tier


@pytest.mark.parametrize(
    ("method", "expected"),
    [("minToken", 0.6), ("quantile", 0.6), ("margin", 0.6 - 0.1), ("geometricMean", 0.6)],
)
def test_each_method_reaches_the_tier_with_the_logprobs_it_needs(
    start_upstream, start_router, two_tier_config, method, expected
):
    small = start_upstream(token_prob=0.6, runner_up_prob=0.1)
    large = start_upstream()
    config = two_tier_config(small.url, large.url, accept=Accept(method=method, threshold=0.01))
    router = start_router(config)

    raw = client_for(router).chat.completions.with_raw_response.create(model="demo", messages=CHAT)

    assert float(raw.headers["x-kascade-confidence"]) == pytest.approx(expected, abs=1e-4)
    if method == "margin":
        assert small.behaviour.last_body["top_logprobs"] >= 2


def test_logprobs_the_caller_asked_for_are_kept_and_trimmed_to_its_count(start_upstream, start_router, two_tier_config):
    small = start_upstream(token_prob=0.9)
    large = start_upstream()
    config = two_tier_config(small.url, large.url, accept=Accept(method="margin", threshold=0.1))
    router = start_router(config)

    completion = client_for(router).chat.completions.create(model="demo", messages=CHAT, logprobs=True, top_logprobs=1)

    content = completion.choices[0].logprobs.content
    assert len(content) == 4
    assert all(len(entry.top_logprobs) == 1 for entry in content)
    assert content[0].logprob == pytest.approx(math.log(0.9))


def test_completions_endpoint_cascades_too(start_upstream, start_router, two_tier_config):
    small = start_upstream(token_prob=0.2)
    large = start_upstream(tokens=[" Paris", "."])
    router = start_router(two_tier_config(small.url, large.url))

    raw = client_for(router).completions.with_raw_response.create(model="demo", prompt="The capital of France is")

    assert raw.parse().choices[0].text == " Paris."
    assert raw.parse().choices[0].logprobs is None
    assert raw.headers["x-kascade-tier"] == "large"
    assert small.behaviour.last_body["logprobs"] == 0


def test_classify_cascade_uses_class_probabilities(start_upstream, start_router, two_tier_config):
    small = start_upstream(class_probs=[0.45, 0.55])
    large = start_upstream(class_probs=[0.05, 0.95])
    config = two_tier_config(small.url, large.url, task=Task.classify, accept=Accept(method="maxProb", threshold=0.7))
    router = start_router(config)

    response = httpx.post(f"{router.url}/classify", json={"model": "demo", "input": ["great film"]})

    assert response.status_code == 200
    assert response.headers["x-kascade-tier"] == "large"
    assert response.json()["data"][0]["probs"] == [0.05, 0.95]
    assert response.json()["data"][0]["label"] == "positive"
    chat = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "demo", "messages": CHAT})
    assert chat.status_code == 404  # a classify cascade does not chat


# -- streaming ------------------------------------------------------------------------------


def test_buffer_streaming_sends_the_accepted_small_answer(start_upstream, start_router, two_tier_config):
    small = start_upstream(token_prob=0.9, tokens=["Hi", " you"])
    large = start_upstream()
    router = start_router(two_tier_config(small.url, large.url))

    with client_for(router).chat.completions.with_streaming_response.create(
        model="demo", messages=CHAT, stream=True, stream_options={"include_usage": True}
    ) as raw:
        assert raw.headers["x-kascade-tier"] == "small"
        chunks = list(raw.parse())

    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "Hi you"
    assert all(chunk.model == "small-model" for chunk in chunks)
    assert chunks[-1].usage.completion_tokens == 2
    assert all(chunk.choices[0].logprobs is None for chunk in chunks if chunk.choices)


def test_buffer_streaming_relays_the_last_tier_after_escalating(start_upstream, start_router, two_tier_config):
    small = start_upstream(token_prob=0.1)
    large = start_upstream(tokens=["A", "B", "C"])
    router = start_router(two_tier_config(small.url, large.url))

    with client_for(router).chat.completions.with_streaming_response.create(
        model="demo", messages=CHAT, stream=True
    ) as raw:
        assert raw.headers["x-kascade-tier"] == "large"
        assert raw.headers["x-kascade-escalated"] == "true"
        chunks = list(raw.parse())

    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == "ABC"
    assert all(chunk.usage is None for chunk in chunks)  # the router asked for usage, the caller did not
    assert large.behaviour.last_body["stream_options"]["include_usage"] is True
    books = stats(router)
    assert books["tiers"]["large"]["outputTokens"] == 3
    assert books["answeredBy"]["large"] == 1


def test_early_streaming_cuts_an_unsure_small_tier_short(start_upstream, start_router, two_tier_config):
    small = start_upstream(token_prob=0.2, tokens=[f"t{i} " for i in range(50)])
    large = start_upstream(tokens=["sure"])
    config = two_tier_config(small.url, large.url, streaming=Streaming(mode="early", early_tokens=4))
    router = start_router(config)

    with client_for(router).chat.completions.with_streaming_response.create(
        model="demo", messages=CHAT, stream=True
    ) as raw:
        assert raw.headers["x-kascade-tier"] == "large"
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)

    assert text == "sure"
    assert small.behaviour.last_body["stream"] is True
    books = stats(router)
    assert books["tiers"]["small"]["calls"] == 1
    assert 4 <= books["tiers"]["small"]["outputTokens"] < 50


def test_early_streaming_streams_on_when_the_first_tokens_are_confident(start_upstream, start_router, two_tier_config):
    tokens = [f"w{i} " for i in range(10)]
    small = start_upstream(token_prob=0.95, tokens=tokens)
    large = start_upstream()
    config = two_tier_config(small.url, large.url, streaming=Streaming(mode="early", early_tokens=3))
    router = start_router(config)

    with client_for(router).chat.completions.with_streaming_response.create(
        model="demo", messages=CHAT, stream=True
    ) as raw:
        assert raw.headers["x-kascade-tier"] == "small"
        chunks = [chunk for chunk in raw.parse() if chunk.choices]

    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == "".join(tokens)
    assert large.behaviour.requests == 0
    assert stats(router)["answeredBy"]["small"] == 1


def test_a_client_that_leaves_mid_stream_cancels_the_tier(start_upstream, start_router, two_tier_config):
    small = start_upstream(token_prob=0.1)
    # 2000 tokens 5 ms apart: still streaming when the client leaves, however loaded the machine.
    large = start_upstream(tokens=[f"x{i}" for i in range(2000)], token_delay_seconds=0.005)
    router = start_router(two_tier_config(small.url, large.url))

    with httpx.stream(
        "POST", f"{router.url}/v1/chat/completions", json={"model": "demo", "messages": CHAT, "stream": True}
    ) as response:
        for _line in response.iter_lines():
            break

    import time

    deadline = time.monotonic() + 5
    while large.behaviour.cancelled_streams == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert large.behaviour.cancelled_streams == 1
    assert stats(router)["failed"] == 1


# -- faults ---------------------------------------------------------------------------------


def test_a_failing_small_tier_is_retried_then_escalated(start_upstream, start_router, two_tier_config):
    small = start_upstream(fail_status=500)
    large = start_upstream(tokens=["ok"])
    router = start_router(two_tier_config(small.url, large.url, retries=2))

    raw = client_for(router).chat.completions.with_raw_response.create(model="demo", messages=CHAT)

    assert raw.headers["x-kascade-tier"] == "large"
    assert raw.headers["x-kascade-trail"] == "small=error,large"
    assert small.behaviour.requests == 3
    assert stats(router)["tiers"]["small"]["errors"] == 3


def test_on_tier_error_fail_returns_a_gateway_error(start_upstream, start_router, two_tier_config):
    small = start_upstream(fail_status=503)
    large = start_upstream()
    router = start_router(two_tier_config(small.url, large.url, retries=0, on_tier_error=OnTierError.fail))

    with pytest.raises(openai.APIStatusError) as caught:
        client_for(router).chat.completions.create(model="demo", messages=CHAT)

    assert caught.value.status_code == 503
    assert "small" in caught.value.message
    assert large.behaviour.requests == 0


def test_a_dead_last_tier_gives_503_with_an_openai_error_body(start_upstream, start_router, two_tier_config):
    from kascade.runtime.serving import free_port

    small = start_upstream(token_prob=0.1)
    router = start_router(two_tier_config(small.url, f"http://127.0.0.1:{free_port()}/v1", retries=1))

    response = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "demo", "messages": CHAT})

    assert response.status_code == 503
    assert set(response.json()["error"]) >= {"message", "type", "code"}
    assert "large" in response.json()["error"]["message"]
    assert stats(router)["failed"] == 1
    ready = httpx.get(f"{router.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["tiers"] == {"small": True, "large": False}


def test_a_slow_small_tier_times_out_and_escalates(start_upstream, start_router, two_tier_config):
    small = start_upstream(delay_seconds=2.0)
    large = start_upstream(tokens=["quick"])
    router = start_router(two_tier_config(small.url, large.url, timeout_seconds=0.3, retries=0))

    raw = client_for(router).chat.completions.with_raw_response.create(model="demo", messages=CHAT)

    assert raw.headers["x-kascade-tier"] == "large"
    assert raw.parse().choices[0].message.content == "quick"


def test_a_slow_last_tier_gives_504(start_upstream, start_router, two_tier_config):
    small = start_upstream(token_prob=0.1)
    large = start_upstream(delay_seconds=2.0)
    router = start_router(two_tier_config(small.url, large.url, timeout_seconds=0.3, retries=0))

    response = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "demo", "messages": CHAT})

    assert response.status_code == 504


def test_a_last_tier_refusal_reaches_the_caller_as_is(start_upstream, start_router, two_tier_config):
    small = start_upstream(token_prob=0.1)
    large = start_upstream(fail_status=400)
    router = start_router(two_tier_config(small.url, large.url))

    response = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "demo", "messages": CHAT})

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "told to fail"
    assert large.behaviour.requests == 1  # a 4xx is not retried


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 422, "model"),
        (b'{"model": "demo"}', 422, "messages"),
        (b'{"model": "demo", "messages": []}', 422, "messages"),
        (b'{"model": "demo", "messages": "hello"}', 422, "messages"),
        (b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 422, "stream"),
        (b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 99}', 422, "top_logprobs"),
        (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
    ],
    ids=[
        "malformed",
        "array",
        "no-model",
        "no-messages",
        "empty-messages",
        "messages-type",
        "stream-type",
        "top-logprobs-range",
        "unknown-model",
    ],
)
def test_bad_requests_get_openai_style_errors(start_upstream, start_router, two_tier_config, body, status, param):
    small = start_upstream()
    large = start_upstream()
    router = start_router(two_tier_config(small.url, large.url))

    response = httpx.post(
        f"{router.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"]
    assert error["param"] == param
    assert small.behaviour.requests == 0 and large.behaviour.requests == 0


def test_an_oversized_body_is_refused_with_413(start_upstream, start_router, two_tier_config):
    small = start_upstream()
    large = start_upstream()
    router = start_router(two_tier_config(small.url, large.url, max_body_bytes=2048))

    huge = {"model": "demo", "messages": [{"role": "user", "content": "x" * 5000}]}
    response = httpx.post(f"{router.url}/v1/chat/completions", json=huge)

    assert response.status_code == 413
    assert "2048" in response.json()["error"]["message"]


def test_wrong_method_and_unknown_route(start_upstream, start_router, two_tier_config):
    small = start_upstream()
    large = start_upstream()
    router = start_router(two_tier_config(small.url, large.url))

    assert httpx.get(f"{router.url}/v1/chat/completions").status_code == 405
    missing = httpx.get(f"{router.url}/v2/nothing")
    assert missing.status_code == 404
    assert "error" in missing.json()


def test_api_keys_are_required_when_configured(start_upstream, start_router, two_tier_config, monkeypatch):
    monkeypatch.setenv("TEST_ROUTER_KEYS", "k1, k2")
    small = start_upstream(token_prob=0.9)
    large = start_upstream()
    router = start_router(two_tier_config(small.url, large.url, api_keys_env="TEST_ROUTER_KEYS"))

    with pytest.raises(openai.AuthenticationError):
        client_for(router, api_key="wrong").chat.completions.create(model="demo", messages=CHAT)
    assert httpx.get(f"{router.url}/v1/models").status_code == 401
    answer = client_for(router, api_key="k2").chat.completions.create(model="demo", messages=CHAT)
    assert answer.model == "small-model"
    assert httpx.get(f"{router.url}/healthz").status_code == 200  # probes need no key


# -- observability --------------------------------------------------------------------------


def test_models_health_metrics_and_stats(start_upstream, start_router, two_tier_config):
    small = start_upstream(token_prob=0.9)
    large = start_upstream()
    router = start_router(two_tier_config(small.url, large.url))
    client = client_for(router)

    assert [model.id for model in client.models.list()] == ["demo"]
    for _ in range(3):
        client.chat.completions.create(model="demo", messages=CHAT)
    small.behaviour.token_prob = 0.1
    client.chat.completions.create(model="demo", messages=CHAT)

    assert httpx.get(f"{router.url}/healthz").status_code == 200
    assert httpx.get(f"{router.url}/readyz").json() == {"ready": True, "tiers": {"small": True, "large": True}}
    metrics = httpx.get(f"{router.metrics_url}/metrics").text
    assert 'kascade_requests_total{answered_by="small",cascade="demo"} 3.0' in metrics
    assert 'kascade_requests_total{answered_by="large",cascade="demo"} 1.0' in metrics
    assert "kascade_tier_latency_seconds_bucket" in metrics
    assert "kascade_confidence_bucket" in metrics
    first = stats(router)
    assert first["requests"] == 4 and first["escalations"] == 1
    assert first["cost"]["saved"] > 0
    second = stats(router)
    assert second["processId"] == first["processId"]
    assert second["requests"] == first["requests"]  # reading the snapshot changes nothing


def test_three_tiers_escalate_one_step_at_a_time(start_upstream, start_router, two_tier_config):
    small = start_upstream(token_prob=0.3)
    medium = start_upstream(token_prob=0.7, tokens=["medium"])
    large = start_upstream(tokens=["large"])
    accept = Accept(method="geometricMean", threshold=0.5)
    config = RouterConfig(
        cascade="three",
        tiers=[
            TierConfig(name="small", served_model="s", url=small.url, accept=accept),
            TierConfig(name="medium", served_model="m", url=medium.url, accept=accept),
            TierConfig(name="large", served_model="l", url=large.url),
        ],
    )
    router = start_router(config)

    raw = client_for(router).chat.completions.with_raw_response.create(model="three", messages=CHAT)

    assert raw.headers["x-kascade-tier"] == "medium"
    assert raw.parse().choices[0].message.content == "medium"
    assert large.behaviour.requests == 0


def test_a_client_that_gives_up_cancels_the_pending_tier_call(start_upstream, start_router, two_tier_config):
    import time

    small = start_upstream(delay_seconds=3.0)
    large = start_upstream()
    router = start_router(two_tier_config(small.url, large.url, timeout_seconds=30))

    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{router.url}/v1/chat/completions", json={"model": "demo", "messages": CHAT}, timeout=0.3)

    deadline = time.monotonic() + 2.0  # well before the small tier would have answered
    while stats(router)["failed"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    books = stats(router)
    assert books["failed"] == 1
    assert books["requests"] == 1
    assert large.behaviour.requests == 0  # cancelled, not escalated
