"""A watch: a chunked stream of JSON event lines, open until `timeoutSeconds`, shutdown or the client leaves.

A resourceVersion older than the kept history is answered as a real server
does: 200, then one ERROR event carrying the 410 Expired Status. BOOKMARKs
are sent when the client allows them (at the end, and after the initial
events with `sendInitialEvents`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp.web

from kascade.testing import errors, tables
from kascade.testing.errors import ApiError
from kascade.testing.kinds import Kind
from kascade.testing.routing import ResourceRequest
from kascade.testing.selectors import parse_field_selector, parse_label_selector
from kascade.testing.store import Store
from kascade.testing.watches import Watcher
from kascade.testing.wire import bool_param, render

DEFAULT_WATCH_TIMEOUT_S = 1800.0


async def serve_watch(
    store: Store, request: ResourceRequest, shutting_down: asyncio.Event
) -> aiohttp.web.StreamResponse:
    query, kind, route = request.query, request.kind, request.route
    labels = parse_label_selector(query.get("labelSelector"))
    fields = parse_field_selector(query.get("fieldSelector"), kind.field_selectors)
    if route.name is not None:  # the deprecated watch of one named object
        fields = parse_field_selector(f"metadata.name={route.name}", kind.field_selectors)
    try:
        # 0 or absent: the server's own (long) timeout, as on a real server.
        timeout = float(query.get("timeoutSeconds") or 0) or DEFAULT_WATCH_TIMEOUT_S
    except ValueError:
        raise errors.bad_request(f"invalid timeoutSeconds: {query.get('timeoutSeconds')!r}") from None
    bookmarks = bool_param(query.get("allowWatchBookmarks"))
    initial_events = bool_param(query.get("sendInitialEvents"))
    wakeup = asyncio.Event()
    watcher = Watcher(kind, route.namespace, labels, fields, wakeup=wakeup.set)
    response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    expired: ApiError | None = None
    try:
        store.watch(watcher, query.get("resourceVersion"), initial_events=initial_events)
    except ApiError as error:
        if error.code != 410:
            raise
        expired = error  # a real server answers 200 and sends the 410 as an ERROR event
    await response.prepare(request.raw)
    request.record.status = response.status
    try:
        if expired is not None:
            await response.write(_event_line({"type": "ERROR", "object": expired.status()}, kind, request.as_table))
            return response
        if initial_events and bookmarks:
            watcher.queue.append({"type": "BOOKMARK", "initial_events_end": True})
        if not await _send_events(store, request, watcher, wakeup, response, timeout, shutting_down):
            return response
        if bookmarks:
            await response.write(_bookmark(store, kind))
    except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
        return response
    finally:
        store.unwatch(watcher)
    try:
        await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass
    return response


async def _send_events(
    store: Store,
    request: ResourceRequest,
    watcher: Watcher,
    wakeup: asyncio.Event,
    response: aiohttp.web.StreamResponse,
    timeout: float,
    shutting_down: asyncio.Event,
) -> bool:
    """Write queued events as they come: True at the timeout or shutdown, False once the watch closed or the client left."""
    kind = request.kind
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        while watcher.queue:
            event = watcher.queue.popleft()
            if event is None:
                return False
            if event["type"] == "BOOKMARK":
                await response.write(_bookmark(store, kind, initial_events_end=True))
            else:
                await response.write(_event_line(event, kind, request.as_table))
        remaining = deadline - loop.time()
        if remaining <= 0 or shutting_down.is_set():
            return True
        wakeup.clear()
        if watcher.queue:
            continue
        try:
            await asyncio.wait_for(wakeup.wait(), timeout=min(remaining, 1.0))
        except TimeoutError:
            transport = request.raw.transport
            if transport is None or transport.is_closing():
                return False


def _event_line(event: dict[str, Any], kind: Kind, as_table: bool) -> bytes:
    obj = event["object"]
    if event["type"] != "ERROR":
        obj = render(kind, obj)
        if as_table:
            obj = tables.table(kind, [obj], resource_version=obj["metadata"]["resourceVersion"])
    return json.dumps({"type": event["type"], "object": obj}).encode() + b"\n"


def _bookmark(store: Store, kind: Kind, *, initial_events_end: bool = False) -> bytes:
    metadata: dict[str, Any] = {"resourceVersion": str(store.resource_version)}
    if initial_events_end:
        metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
    event = {"type": "BOOKMARK", "object": {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": metadata}}
    return json.dumps(event).encode() + b"\n"
