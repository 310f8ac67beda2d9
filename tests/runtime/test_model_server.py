"""`kascade serve` as a real subprocess, called the way users and the router call vLLM."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from kascade.runtime.sse import SSE_DONE, iter_sse_json, sse_event

HELLO = [{"role": "user", "content": "Hello! What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(start_shared_model_server, tiny_small_lm_dir: Path):
    return start_shared_model_server(tiny_small_lm_dir, name="small")


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=30)


def generated_tokens(server) -> float:
    metrics = httpx.get(f"{server.base_url}/metrics").text
    line = next(line for line in metrics.splitlines() if line.startswith("kascade_model_server_generated_tokens_total"))
    return float(line.rsplit(" ", 1)[1])


def test_health_and_models(server, client: openai.OpenAI) -> None:
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    models = client.models.list()
    assert [m.id for m in models.data] == ["small"]
    assert models.data[0].owned_by == "kascade"


def test_chat(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="small", messages=HELLO, max_tokens=8, temperature=0)
    assert response.object == "chat.completion"
    assert response.model == "small"
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"
    assert response.usage.completion_tokens == 8
    assert response.usage.total_tokens == response.usage.prompt_tokens + 8


def test_chat_logprobs(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="small", messages=HELLO, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = response.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        top = [t.logprob for t in entry.top_logprobs]
        assert len(top) == 3 and top == sorted(top, reverse=True)
        assert entry.logprob == pytest.approx(top[0])
        assert entry.bytes == list(entry.token.encode("utf-8", errors="replace"))


def test_completions(client: openai.OpenAI) -> None:
    response = client.completions.create(
        model="small", prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=2
    )
    assert response.object == "text_completion"
    choice = response.choices[0]
    assert isinstance(choice.text, str)
    assert len(choice.logprobs.tokens) == 6 == len(choice.logprobs.token_logprobs) == len(choice.logprobs.top_logprobs)
    assert all(token in top for token, top in zip(choice.logprobs.tokens, choice.logprobs.top_logprobs))


def test_chat_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="small", messages=HELLO, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(
        model="small",
        messages=HELLO,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_completion_streaming(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="small", prompt="One two", max_tokens=6, temperature=0)
    chunks = list(client.completions.create(model="small", prompt="One two", max_tokens=6, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_sse_wire_format(server) -> None:
    body = {"model": "small", "messages": HELLO, "max_tokens": 3, "temperature": 0, "stream": True}
    response = httpx.post(f"{server.url}/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.content.split(b"\n\n")
    assert response.content.endswith(SSE_DONE)
    for event in events[:-2]:
        assert event.startswith(b"data: ")
        assert json.loads(event[len(b"data: ") :])["object"] == "chat.completion.chunk"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=HELLO, max_tokens=2)
    assert "gpt-17" in caught.value.message
    assert caught.value.body["type"] == "NotFoundError"  # the client hands over body["error"]


def test_bad_parameters_are_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="small", messages=HELLO, n=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="small", messages=HELLO, max_tokens=100_000)
    # A bad streaming request is refused with a status, not inside a 200 stream.
    with pytest.raises(openai.BadRequestError):
        list(client.chat.completions.create(model="small", messages=HELLO, top_logprobs=25, logprobs=True, stream=True))


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2, 3]", b"\xff\xfe", b""],
    ids=["malformed", "array", "not-utf8", "empty"],
)
def test_malformed_bodies_are_400(server, content: bytes) -> None:
    response = httpx.post(
        f"{server.url}/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == 400 and error["type"] == "BadRequestError"


def test_oversized_body_is_413(server) -> None:
    body = {"model": "small", "messages": [{"role": "user", "content": "x" * 5_000_000}]}
    response = httpx.post(f"{server.url}/chat/completions", json=body, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == 413


def test_unknown_route_is_a_json_404(server) -> None:
    response = httpx.get(f"{server.url}/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == 404


def test_client_disconnect_stops_generation(server) -> None:
    body = {"model": "small", "messages": HELLO, "max_tokens": 400, "temperature": 0, "stream": True}
    before = generated_tokens(server)
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    time.sleep(0.5)
    after_close = generated_tokens(server)
    time.sleep(0.3)
    assert generated_tokens(server) == after_close
    assert after_close - before < 200  # the tiny model would have finished all 400 by now otherwise


def test_classifier_server(start_model_server, tiny_classifier_dir: Path) -> None:
    server = start_model_server(tiny_classifier_dir, name="sentiment", task="classify")
    response = httpx.post(f"{server.base_url}/classify", json={"model": "sentiment", "input": ["great", "awful"]})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == "sentiment"
    assert [item["label"] in ("negative", "positive") for item in body["data"]] == [True, True]
    assert all(item["num_classes"] == 2 for item in body["data"])

    # A classifier does not chat.
    chat = httpx.post(f"{server.url}/chat/completions", json={"model": "sentiment", "messages": HELLO})
    assert chat.status_code == 400

    server.kill()
    assert server.process.poll() is not None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.base_url}/health", timeout=2)


def test_iter_sse_json_reads_the_servers_stream(server) -> None:
    body = {"model": "small", "prompt": "The sun is", "max_tokens": 4, "temperature": 0, "stream": True}

    async def read() -> list[dict]:
        async with httpx.AsyncClient() as http, http.stream("POST", f"{server.url}/completions", json=body) as response:
            return [chunk async for chunk in iter_sse_json(response.aiter_lines())]

    chunks = asyncio.run(read())
    assert len(chunks) == 4
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_iter_sse_json_edge_cases() -> None:
    async def lines(*items: str | bytes) -> AsyncIterator[str | bytes]:
        for item in items:
            yield item

    async def read(*items: str | bytes) -> list[dict]:
        return [event async for event in iter_sse_json(lines(*items))]

    first, second = sse_event({"a": 1}), sse_event({"b": "é"})
    raw = (first + b": keep-alive comment\n\n" + second + SSE_DONE + sse_event({"after": "done"})).decode()
    assert asyncio.run(read(*raw.split("\n"))) == [{"a": 1}, {"b": "é"}]
    # One event over two data lines; bytes lines; a stream cut without a final blank line.
    assert asyncio.run(read("event: message", 'data: {"x":', b"data: 2}", "", 'data: {"y": 3}')) == [{"x": 2}, {"y": 3}]
    with pytest.raises(ValueError, match="not JSON"):
        asyncio.run(read("data: {oops", ""))


def test_serve_refuses_what_it_cannot_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kascade.runtime.server import run_model_server

    def serve(model: str) -> int:
        return run_model_server(
            model=model, port=1, host="127.0.0.1", served_model_name=None, task="generate", device="cpu"
        )

    assert serve(str(tmp_path / "nope")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert serve(str(tmp_path)) == 2
    assert "no config.json" in capsys.readouterr().err
    assert serve("pkg://no-such-model") == 2
    assert "pkg://no-such-model" in capsys.readouterr().err
