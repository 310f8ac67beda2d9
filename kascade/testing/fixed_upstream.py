"""A fixed-answer OpenAI-compatible server, for tests and benchmarks.

It answers every chat or completion request with the same text and the same
per-token logprobs, written by the engines' own writer of vLLM's layout
(`kascade.runtime.engines.vllm_layout`), so a test can put a tier's
confidence exactly where it wants it, and a benchmark measures the router
rather than a model. It can be told to be slow or to fail. It is not a model
and says so in its `owned_by` field.
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

from kascade.runtime.engines import vllm_layout as layout


@dataclass
class FixedBehaviour:
    """What the server does; tests change it while the server runs."""

    model: str = "fixed"
    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "."])
    token_prob: float = 0.9  # every generated token's probability
    runner_up_prob: float = 0.05  # the second candidate at every position
    delay_seconds: float = 0.0  # before answering (or before the first chunk)
    token_delay_seconds: float = 0.0  # between streamed tokens: a stream that is still going when its client leaves
    fail_status: int | None = None  # answer every request with this status instead
    prompt_tokens: int = 7
    labels: list[str] = field(default_factory=lambda: ["negative", "positive"])
    class_probs: list[float] = field(default_factory=lambda: [0.2, 0.8])
    requests: int = 0  # how many requests arrived (chat, completion, classify)
    cancelled_streams: int = 0  # streams whose client went away before the end
    last_body: dict[str, Any] | None = None

    def scored_tokens(self, top: int, *, as_ids: bool = False) -> list[layout.TokenLogprobs]:
        """Each token with its fixed logprob; the top list holds the token itself, then `<alt>`, cut to `top`.

        `as_ids` (vLLM's return_tokens_as_token_ids): token i is named `token_id:<100 + i>`, `<alt>` `token_id:1`.
        """
        chosen, runner_up = math.log(self.token_prob), math.log(self.runner_up_prob)
        names = [f"token_id:{100 + index}" for index in range(len(self.tokens))] if as_ids else self.tokens
        alt = "token_id:1" if as_ids else "<alt>"
        return [layout.TokenLogprobs(name, chosen, ((name, chosen), (alt, runner_up))[:top]) for name in names]

    def usage(self) -> dict[str, int]:
        return layout.usage(self.prompt_tokens, len(self.tokens))


def _logprobs(behaviour: FixedBehaviour, body: dict[str, Any], *, chat: bool) -> dict[str, Any] | None:
    """The logprobs block the request asked for (chat: `logprobs` + `top_logprobs`; completions: `logprobs` = k)."""
    as_ids = bool(body.get("return_tokens_as_token_ids"))
    if chat:
        wanted = bool(body.get("logprobs"))
        top = int(body.get("top_logprobs") or 0)
        return layout.chat_logprobs(behaviour.scored_tokens(top, as_ids=as_ids)) if wanted else None
    if body.get("logprobs") is None:
        return None
    return layout.completion_logprobs(behaviour.scored_tokens(max(int(body["logprobs"]), 1), as_ids=as_ids))


def _header(behaviour: FixedBehaviour, response_id: str) -> layout.ResponseHeader:
    return layout.ResponseHeader(response_id, int(time.time()), behaviour.model)


def create_fixed_upstream_app(behaviour: FixedBehaviour) -> Starlette:
    async def gate(request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        behaviour.requests += 1
        body = json.loads(await request.body())
        behaviour.last_body = body
        if behaviour.delay_seconds:
            await asyncio.sleep(behaviour.delay_seconds)
        if behaviour.fail_status is not None:
            error = {
                "error": {
                    "message": "told to fail",
                    "type": "TestFailure",
                    "param": None,
                    "code": behaviour.fail_status,
                }
            }
            return None, JSONResponse(error, status_code=behaviour.fail_status)
        return body, None

    async def generate(request: Request, chat: bool) -> Response:
        body, failure = await gate(request)
        if failure is not None:
            return failure
        assert body is not None
        if body.get("stream"):
            return StreamingResponse(_events(behaviour, body, chat=chat), media_type="text/event-stream")
        build = layout.chat_completion if chat else layout.text_completion
        return JSONResponse(
            build(
                _header(behaviour, "chatcmpl-fixed" if chat else "cmpl-fixed"),
                "".join(behaviour.tokens),
                logprobs=_logprobs(behaviour, body, chat=chat),
                finish_reason="stop",
                stop_reason=None,
                token_usage=behaviour.usage(),
            )
        )

    async def chat(request: Request) -> Response:
        return await generate(request, chat=True)

    async def completion(request: Request) -> Response:
        return await generate(request, chat=False)

    async def classify(request: Request) -> Response:
        body, failure = await gate(request)
        if failure is not None:
            return failure
        assert body is not None
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        results = [layout.class_result(index, behaviour.class_probs, behaviour.labels) for index in range(len(inputs))]
        return JSONResponse(
            layout.classification(_header(behaviour, "classify-fixed"), results, behaviour.prompt_tokens * len(inputs))
        )

    async def models(request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": behaviour.model, "object": "model", "created": 0, "owned_by": "fixed-answer-test-server"}
                ],
            }
        )

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completion, methods=["POST"]),
            Route("/classify", classify, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


async def _events(behaviour: FixedBehaviour, body: dict[str, Any], *, chat: bool) -> AsyncIterator[bytes]:
    """The SSE stream: (chat: a role chunk), one chunk per token, a closing chunk, (usage), [DONE]."""
    header = _header(behaviour, "fixed")
    finished = False
    try:
        if chat:
            yield _event(layout.chat_role_chunk(header))
        logprobs = _logprobs(behaviour, body, chat=chat)
        text_offset = 0
        for index, token in enumerate(behaviour.tokens):
            await asyncio.sleep(behaviour.token_delay_seconds)
            yield _event(_token_chunk(header, logprobs, index, token, text_offset, chat=chat))
            text_offset += len(token)
        if chat:
            yield _event(layout.chat_chunk(header, None, logprobs=None, finish_reason="stop"))
        else:
            yield _event(layout.completion_chunk(header, "", logprobs=None, finish_reason="stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            yield _event(layout.usage_chunk(header, chat=chat, token_usage=behaviour.usage()))
        yield b"data: [DONE]\n\n"
        finished = True
    finally:
        if not finished:
            behaviour.cancelled_streams += 1


def _token_chunk(
    header: layout.ResponseHeader,
    logprobs: dict[str, Any] | None,
    index: int,
    token: str,
    text_offset: int,
    *,
    chat: bool,
) -> dict[str, Any]:
    """The chunk of token `index`, with its slice of the whole answer's logprobs."""
    if chat:
        own = {"content": [logprobs["content"][index]]} if logprobs else None
        return layout.chat_chunk(header, token, logprobs=own, finish_reason=None)
    own = None
    if logprobs:
        own = {key: [values[index]] for key, values in logprobs.items()}
        own["text_offset"] = [text_offset]
    return layout.completion_chunk(header, token, logprobs=own, finish_reason=None)


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"
