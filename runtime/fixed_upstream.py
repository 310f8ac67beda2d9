"""A fixed-answer OpenAI-compatible server, for tests and benchmarks.

It answers every chat or completion request with the same text and the same
per-token logprobs (vLLM's layout), so a test can put a tier's confidence
exactly where it wants it, and a benchmark measures the router rather than a
model. It can be told to be slow or to fail. It is not a model and says so in
its `owned_by` field.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class FixedBehaviour:
    """What the server does; tests change it while the server runs."""

    model: str = "fixed"
    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "."])
    token_prob: float = 0.9  # every generated token's probability
    runner_up_prob: float = 0.05  # the second candidate at every position
    delay_seconds: float = 0.0  # before answering (or before the first chunk)
    fail_status: int | None = None  # answer every request with this status instead
    prompt_tokens: int = 7
    labels: list[str] = field(default_factory=lambda: ["negative", "positive"])
    class_probs: list[float] = field(default_factory=lambda: [0.2, 0.8])
    requests: int = 0  # how many requests arrived (chat, completion, classify)
    cancelled_streams: int = 0  # streams whose client went away before the end
    last_body: dict[str, Any] | None = None


def _token_logprobs(behaviour: FixedBehaviour, top: int) -> list[dict[str, Any]]:
    chosen = math.log(behaviour.token_prob)
    runner_up = math.log(behaviour.runner_up_prob)
    entries = []
    for token in behaviour.tokens:
        alternatives = [{"token": token, "logprob": chosen, "bytes": list(token.encode())}]
        alternatives.append({"token": "<alt>", "logprob": runner_up, "bytes": list(b"<alt>")})
        entries.append(
            {"token": token, "logprob": chosen, "bytes": list(token.encode()), "top_logprobs": alternatives[:top]}
        )
    return entries


def _usage(behaviour: FixedBehaviour) -> dict[str, int]:
    completion = len(behaviour.tokens)
    return {"prompt_tokens": behaviour.prompt_tokens, "completion_tokens": completion,
            "total_tokens": behaviour.prompt_tokens + completion}


def _chat_logprobs(behaviour: FixedBehaviour, body: dict[str, Any]) -> dict[str, Any] | None:
    if not body.get("logprobs"):
        return None
    return {"content": _token_logprobs(behaviour, int(body.get("top_logprobs") or 0))}


def _completion_logprobs(behaviour: FixedBehaviour, body: dict[str, Any]) -> dict[str, Any] | None:
    if body.get("logprobs") is None:
        return None
    entries = _token_logprobs(behaviour, max(int(body["logprobs"]), 1))
    offsets, offset = [], 0
    for token in behaviour.tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": list(behaviour.tokens),
        "token_logprobs": [entry["logprob"] for entry in entries],
        "top_logprobs": [{alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]} for entry in entries],
        "text_offset": offsets,
    }


def create_fixed_upstream_app(behaviour: FixedBehaviour) -> Starlette:
    async def gate(request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        behaviour.requests += 1
        body = json.loads(await request.body())
        behaviour.last_body = body
        if behaviour.delay_seconds:
            await asyncio.sleep(behaviour.delay_seconds)
        if behaviour.fail_status is not None:
            error = {"error": {"message": "told to fail", "type": "TestFailure", "param": None,
                               "code": behaviour.fail_status}}
            return None, JSONResponse(error, status_code=behaviour.fail_status)
        return body, None

    async def chat(request: Request) -> Response:
        body, failure = await gate(request)
        if failure is not None:
            return failure
        assert body is not None
        text = "".join(behaviour.tokens)
        if body.get("stream"):
            return _stream(request, behaviour, body, chat=True)
        return JSONResponse({
            "id": "chatcmpl-fixed", "object": "chat.completion", "created": int(time.time()),
            "model": behaviour.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": _chat_logprobs(behaviour, body), "finish_reason": "stop"}],
            "usage": _usage(behaviour),
        })

    async def completion(request: Request) -> Response:
        body, failure = await gate(request)
        if failure is not None:
            return failure
        assert body is not None
        if body.get("stream"):
            return _stream(request, behaviour, body, chat=False)
        return JSONResponse({
            "id": "cmpl-fixed", "object": "text_completion", "created": int(time.time()),
            "model": behaviour.model,
            "choices": [{"index": 0, "text": "".join(behaviour.tokens),
                         "logprobs": _completion_logprobs(behaviour, body), "finish_reason": "stop"}],
            "usage": _usage(behaviour),
        })

    async def classify(request: Request) -> Response:
        body, failure = await gate(request)
        if failure is not None:
            return failure
        assert body is not None
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        best = max(range(len(behaviour.class_probs)), key=behaviour.class_probs.__getitem__)
        return JSONResponse({
            "id": "classify-fixed", "object": "list", "created": int(time.time()), "model": behaviour.model,
            "data": [{"index": index, "label": behaviour.labels[best], "probs": list(behaviour.class_probs),
                      "num_classes": len(behaviour.class_probs)} for index in range(len(inputs))],
            "usage": {"prompt_tokens": behaviour.prompt_tokens * len(inputs),
                      "total_tokens": behaviour.prompt_tokens * len(inputs), "completion_tokens": 0},
        })

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": behaviour.model, "object": "model", "created": 0, "owned_by": "fixed-answer-test-server"}]})

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completion, methods=["POST"]),
        Route("/classify", classify, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ])


def _stream(request: Request, behaviour: FixedBehaviour, body: dict[str, Any], *, chat: bool) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        base = {"id": "fixed", "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": behaviour.model}
        finished = False
        try:
            if chat:
                yield _event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                   "logprobs": None, "finish_reason": None}]})
            top = int(body.get("top_logprobs") or 0) if chat else max(int(body.get("logprobs") or 0), 1)
            wants = bool(body.get("logprobs")) if chat else body.get("logprobs") is not None
            for entry in _token_logprobs(behaviour, top):
                await asyncio.sleep(0)
                if chat:
                    logprobs = {"content": [entry]} if wants else None
                    choice = {"index": 0, "delta": {"content": entry["token"]}, "logprobs": logprobs,
                              "finish_reason": None}
                else:
                    logprobs = ({"tokens": [entry["token"]], "token_logprobs": [entry["logprob"]],
                                 "top_logprobs": [{alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]}],
                                 "text_offset": [0]} if wants else None)
                    choice = {"index": 0, "text": entry["token"], "logprobs": logprobs, "finish_reason": None}
                yield _event({**base, "choices": [choice]})
            last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"} if chat else {
                "index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
            yield _event({**base, "choices": [last]})
            if (body.get("stream_options") or {}).get("include_usage"):
                yield _event({**base, "choices": [], "usage": _usage(behaviour)})
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:
                behaviour.cancelled_streams += 1

    return StreamingResponse(events(), media_type="text/event-stream")


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"
