"""Server-sent events as the OpenAI API uses them: `data: {json}` events, then `data: [DONE]`.

Writing (`sse_event`, `SSE_DONE`, `EventStreamResponse`) serves the model
server and the router; reading (`iter_sse_json`) serves the router's HTTP
client of upstream tiers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send

from kascade.runtime.http_request import wait_for_disconnect

SSE_DONE = b"data: [DONE]\n\n"


def sse_event(data: Mapping[str, Any]) -> bytes:
    # Compact separators: these events are sent once per token.
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def iter_sse_json(lines: AsyncIterable[str | bytes]) -> AsyncIterator[dict[str, Any]]:
    """Yield the JSON body of each `data:` event of an SSE line stream, until `[DONE]`.

    `lines` are the stream's lines without their line breaks (httpx's
    `Response.aiter_lines()`). Comments (`:` lines), other fields (`event:`,
    `id:`) and blank lines are skipped; an event split over several `data:`
    lines is joined as the SSE spec says. An event that is not a JSON object
    raises ValueError: the upstream answer is unreadable.
    """
    data_lines: list[str] = []

    def parse(payload: str) -> dict[str, Any]:
        try:
            value = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise ValueError(f"unreadable SSE event (not JSON): {payload[:200]!r}") from exc
        if not isinstance(value, dict):
            # ValueError, not TypeError: an unreadable answer, like the JSON error above.
            raise ValueError(f"unreadable SSE event (not a JSON object): {payload[:200]!r}")
        return value

    async for raw in lines:
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        line = line.rstrip("\r\n")
        if line == "":
            if data_lines:
                payload = "\n".join(data_lines)
                data_lines = []
                if payload.strip() == "[DONE]":
                    return
                yield parse(payload)
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field != "data":
            continue
        value = value.removeprefix(" ")
        # Servers that omit the blank line between events still end each one with [DONE] or JSON.
        if not data_lines and value.strip() == "[DONE]":
            return
        data_lines.append(value)
    if data_lines:
        payload = "\n".join(data_lines)
        if payload.strip() != "[DONE]":
            yield parse(payload)


class EventStreamResponse:
    """An ASGI `text/event-stream` response that stops its source when the client leaves.

    Starlette's StreamingResponse relies on `send` failing after a disconnect,
    which uvicorn does not guarantee; a model would then keep generating for
    nobody. Here a watcher reads `http.disconnect` and cancels the stream, and
    the source iterator is always closed (`aclose`), which cancels generation.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.events = events
        self.status_code = status_code
        self.headers = {"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]

        async def stream(cancel_scope: anyio.CancelScope) -> None:
            try:
                await send({"type": "http.response.start", "status": self.status_code, "headers": raw_headers})
                async for data in self.events:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:  # some servers fail `send` once the client is gone
                pass
            cancel_scope.cancel()

        async def watch_disconnect(cancel_scope: anyio.CancelScope) -> None:
            await wait_for_disconnect(receive)
            cancel_scope.cancel()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(stream, group.cancel_scope)
                group.start_soon(watch_disconnect, group.cancel_scope)
        finally:
            await aclose_quietly(self.events)


async def aclose_quietly(events: AsyncIterator[Any]) -> None:
    """Close a stream of events (a generator's `aclose`); closing is cleanup, so its errors are not the caller's."""
    close = getattr(events, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:  # noqa: BLE001 - the caller already has what matters
        pass
