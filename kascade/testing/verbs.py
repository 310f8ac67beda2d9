"""The verbs on a resource URL (get, list, watch, create, update, patch, delete, deletecollection), each over the store.

The verb is named as an RBAC rule names it and written into the request log
before the store is asked, so a refused request still shows what it tried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp.web

from kascade.testing import errors
from kascade.testing.listing import serve_list
from kascade.testing.routing import ResourceRequest, Route
from kascade.testing.scale import serve_scale
from kascade.testing.selectors import parse_field_selector, parse_label_selector
from kascade.testing.store import Store
from kascade.testing.watch_stream import serve_watch
from kascade.testing.wire import PATCH_TYPES, bool_param, json_response, media_type, parse_body, render, render_one


async def serve_resource(
    store: Store, request: ResourceRequest, shutting_down: asyncio.Event
) -> aiohttp.web.StreamResponse:
    route = request.route
    if route.subresource == "scale" and route.name is not None:
        return serve_scale(store, request)
    if request.method == "GET" and bool_param(request.query.get("watch")):
        request.record.verb = "watch"
        return await serve_watch(store, request, shutting_down)
    verb = _verb(request.method, route)
    if verb is None:
        raise errors.method_not_allowed()
    request.record.verb = verb
    return _VERBS[verb](store, request)


def _verb(method: str, route: Route) -> str | None:
    named = route.name is not None
    match method:
        case "GET":
            return "get" if named else "list"
        case "POST" if not named:
            return "create"
        case "PUT" if named:
            return "update"
        case "PATCH" if named:
            return "patch"
        case "DELETE" if not named:
            return "deletecollection"
        case "DELETE" if route.subresource is None:
            return "delete"
    return None


def _get(store: Store, request: ResourceRequest) -> aiohttp.web.Response:
    route = request.route
    assert route.name is not None
    obj = store.require(request.kind, route.namespace, route.name)
    return json_response(
        render_one(request.kind, obj, request.as_table, request.accept, request.query.get("includeObject", "Metadata"))
    )


def _create(store: Store, request: ResourceRequest) -> aiohttp.web.Response:
    kind, route = request.kind, request.route
    if kind.namespaced and route.namespace is None:
        raise errors.method_not_allowed()  # the cluster-wide path of a namespaced kind serves list and watch only
    result = store.create(
        kind, route.namespace, request.parsed_body(), dry_run=request.dry_run, field_validation=request.field_validation
    )
    request.record.warnings = result.warnings
    return json_response(render(kind, result.obj), 201, result.warnings)


def _update(store: Store, request: ResourceRequest) -> aiohttp.web.Response:
    kind, route = request.kind, request.route
    assert route.name is not None
    result = store.update(
        kind,
        route.namespace,
        route.name,
        request.parsed_body(),
        subresource=route.subresource,
        dry_run=request.dry_run,
        field_validation=request.field_validation,
    )
    request.record.warnings = result.warnings
    return json_response(render(kind, result.obj), 200, result.warnings)


def _patch(store: Store, request: ResourceRequest) -> aiohttp.web.Response:
    kind, route = request.kind, request.route
    assert route.name is not None
    media = media_type(request.content_type)
    patch_type = PATCH_TYPES.get(media)
    if patch_type is None:
        raise errors.unsupported_media_type(media, list(PATCH_TYPES)[:4])
    result = store.patch(
        kind,
        route.namespace,
        route.name,
        patch_type,
        parse_body(request.body, media),
        subresource=route.subresource,
        field_manager=request.query.get("fieldManager"),
        dry_run=request.dry_run,
        field_validation=request.field_validation,
    )
    request.record.warnings = result.warnings
    return json_response(render(kind, result.obj), 201 if result.created else 200, result.warnings)


def _delete(store: Store, request: ResourceRequest) -> aiohttp.web.Response:
    kind, route = request.kind, request.route
    assert route.name is not None
    options = _delete_options(request)
    outcome = store.delete(
        kind,
        route.namespace,
        route.name,
        propagation=options.get("propagationPolicy"),
        preconditions=options.get("preconditions"),
        dry_run=request.dry_run,
    )
    if outcome.deleted_now and not kind.custom:
        return json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": route.name,
                    "group": kind.group,
                    "kind": kind.plural,
                    "uid": outcome.obj["metadata"].get("uid"),
                },
            }
        )
    return json_response(render(kind, outcome.obj))


def _delete_collection(store: Store, request: ResourceRequest) -> aiohttp.web.Response:
    kind, route, query = request.kind, request.route, request.query
    if kind.plural == "namespaces" or (kind.namespaced and route.namespace is None):
        raise errors.method_not_allowed()
    options = _delete_options(request)
    labels = parse_label_selector(query.get("labelSelector"))
    fields = parse_field_selector(query.get("fieldSelector"), kind.field_selectors)
    deleted = []
    for obj in store.list_objects(kind, route.namespace, labels, fields):
        meta = obj["metadata"]
        deleted.append(
            store.delete(
                kind,
                meta.get("namespace"),
                meta["name"],
                propagation=options.get("propagationPolicy"),
                dry_run=request.dry_run,
            ).obj
        )
    return json_response(
        {
            "kind": kind.list_kind,
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(store.resource_version)},
            "items": [render(kind, obj) for obj in deleted],
        }
    )


def _delete_options(request: ResourceRequest) -> dict[str, Any]:
    """DeleteOptions from the body and the query; `orphanDependents: true` is the old spelling of Orphan."""
    options = dict((request.parsed_body() if request.body else None) or {})
    if request.query.get("propagationPolicy"):
        options["propagationPolicy"] = request.query["propagationPolicy"]
    if options.get("orphanDependents") is True and not options.get("propagationPolicy"):
        options["propagationPolicy"] = "Orphan"
    policy = options.get("propagationPolicy")
    if policy not in (None, "Background", "Foreground", "Orphan"):
        raise errors.invalid(
            "DeleteOptions",
            "",
            "",
            [
                errors.Cause(
                    "FieldValueNotSupported",
                    f'Unsupported value: "{policy}": supported values: "Foreground", "Background", "Orphan", "nil"',
                    "propagationPolicy",
                )
            ],
        )
    return options


_VERBS: dict[str, Callable[[Store, ResourceRequest], aiohttp.web.Response]] = {
    "get": _get,
    "list": serve_list,
    "create": _create,
    "update": _update,
    "patch": _patch,
    "delete": _delete,
    "deletecollection": _delete_collection,
}
