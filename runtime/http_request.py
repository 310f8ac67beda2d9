"""The caller's side of an HTTP request, for the router and the model server alike.

Its JSON body, read with a size limit so that a huge body is refused before it
is held whole; and its disconnect, so that work for a client that went away is
cancelled (and with it the tiers' generation) rather than finished for nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from kascade.runtime.wire import decode_json

CLIENT_CLOSED_REQUEST = 499  # nginx's "client closed request"; nobody reads it

_Result = TypeVar("_Result")


class BodyError(Exception):
    """The body cannot be used: `status` and `message` are the error response's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_json_object(request: Request, max_body_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object; a body over `max_body_bytes` is refused (413) before it is read whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise _too_large(max_body_bytes)
    received = bytearray()
    try:
        async for part in request.stream():
            received.extend(part)
            if len(received) > max_body_bytes:
                raise _too_large(max_body_bytes)
    except ClientDisconnect as exc:
        raise BodyError(CLIENT_CLOSED_REQUEST, "the client went away while sending the body") from exc
    try:
        body = decode_json(received)
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise BodyError(400, f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BodyError(400, "the request body must be a JSON object")
    return body


def _too_large(max_body_bytes: int) -> BodyError:
    return BodyError(413, f"the request body exceeds {max_body_bytes} bytes")


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone away (the request body must have been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[_Result]) -> _Result | None:
    """Await `work`; if the client goes away first, cancel it (and so its upstream calls) and return None.

    The work runs in this task and a watcher cancels it, rather than two tasks
    and a wait: one task less per request on the hot path.
    """
    this_task = asyncio.current_task()
    assert this_task is not None
    client_left = False

    async def watch() -> None:
        nonlocal client_left
        await wait_for_disconnect(request.receive)
        client_left = True
        this_task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if client_left:
            this_task.uncancel()
            return None
        raise
    finally:
        watcher.cancel()
