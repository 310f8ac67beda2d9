"""The HTTP face of the stand-in: a `kmock.KubernetesScaffold` that serves Kubernetes' REST API.

kmock provides the request parsing, the request log and the Status-shaped
error rendering; this subclass replaces kmock's permissive emulator with the
strict store (store.py): it records each request (recording.py), resolves the
URL (routing.py: a discovery document, or a resource route) and hands a
resource request to its verb (verbs.py).

Fault injection stays available through kmock's DSL: a reaction added to the
handler (`server.handler['patch', kmock.resource('apps', 'v1', 'deployments')] << 500`)
answers matching requests before the API does.
"""

from __future__ import annotations

import asyncio

import aiohttp.web
import attrs
import kmock
from kmock._internal import (
    apps as kmock_apps,  # RawHandler._handle: the DSL reactions only
)

from kascade.testing.errors import ApiError
from kascade.testing.recording import RecordedRequest, record_of
from kascade.testing.routing import ResourceRequest, resolve
from kascade.testing.store import Store
from kascade.testing.verbs import serve_resource
from kascade.testing.wire import error_response, json_response


@attrs.define(kw_only=True)
class StandinHandler(kmock.KubernetesScaffold):
    """Answers the Kubernetes API from a strict in-memory store."""

    store: Store = attrs.field()
    recorded: list[RecordedRequest] = attrs.field(factory=list)
    _shutting_down: asyncio.Event = attrs.field(factory=asyncio.Event)

    def __attrs_post_init__(self) -> None:
        # kmock's scaffold would register its own (permissive) discovery reactions here;
        # every request goes to `_serve` instead, so none are registered.
        pass

    def shutdown(self) -> None:
        self._shutting_down.set()
        self.store.close_watchers()

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's URL parser fails on some valid paths (`/api/v1/namespaces`); such a request
        # is still logged and served, just without kmock's Kubernetes-specific parsing.
        body = await raw_request.read()
        try:
            request = await kmock.Request._parse(raw_request, id=len(self._requests))
        except (ValueError, TypeError):
            request = kmock.Request(
                id=len(self._requests),
                raw_request=raw_request,
                url=raw_request.url,
                method=raw_request.method,
                params=dict(raw_request.query),
                headers=dict(raw_request.headers),
                body=body,
            )
        self._requests.append(request)
        return await self._handle(request)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        record = record_of(request)
        self.recorded.append(record)
        if self._payloads:  # reactions a test added (fault injection) come first
            try:
                response = await kmock_apps.RawHandler._handle(self, request)
            except NotImplementedError:
                pass
            else:
                record.status = response.status
                return response
        return await self._serve(request, record)

    async def _serve(self, request: kmock.Request, record: RecordedRequest) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        assert raw is not None
        try:
            response = await self._dispatch(raw, request.body, record)
        except ApiError as error:
            response = error_response(error)
        except Exception as error:  # noqa: BLE001 - a bug in the stand-in: answer 500 with the cause, like kmock
            response = error_response(ApiError(500, "InternalError", f"{type(error).__name__}: {error}"))
            if self._errors:
                self._errors[-1].append(error)
        record.status = response.status
        return response

    async def _dispatch(
        self, raw: aiohttp.web.BaseRequest, body: bytes, record: RecordedRequest
    ) -> aiohttp.web.StreamResponse:
        path = raw.path.rstrip("/") or "/"
        method = raw.method.upper()
        if path in ("/healthz", "/livez", "/readyz"):
            return aiohttp.web.Response(text="ok")
        resolved = resolve(self.store.kinds, method, path)
        if isinstance(resolved, dict):
            return json_response(resolved)
        record.group, record.version, record.resource = resolved.group, resolved.version, resolved.kind.plural
        record.namespace, record.name, record.subresource = resolved.namespace, resolved.name, resolved.subresource
        resource_request = ResourceRequest.parse(raw, method, resolved, body, record)
        return await serve_resource(self.store, resource_request, self._shutting_down)
