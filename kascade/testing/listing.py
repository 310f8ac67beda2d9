"""Listing: selectors, `limit`/`continue` pagination, and the list shapes clients ask for.

A typed list of built-in objects carries no apiVersion/kind on its items; a
Table (kubectl get) or PartialObjectMetadataList is served when the Accept
header asks for one.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp.web

from kascade.testing import errors, tables
from kascade.testing.routing import ResourceRequest
from kascade.testing.selectors import parse_field_selector, parse_label_selector
from kascade.testing.store import Store
from kascade.testing.wire import json_response, render


def serve_list(store: Store, request: ResourceRequest) -> aiohttp.web.Response:
    query, kind, route = request.query, request.kind, request.route
    labels = parse_label_selector(query.get("labelSelector"))
    fields = parse_field_selector(query.get("fieldSelector"), kind.field_selectors)
    items = store.list_objects(kind, route.namespace, labels, fields)
    list_rv = store.resource_version
    if query.get("continue"):
        start, list_rv = parse_continue_token(query["continue"])
        items = [obj for obj in items if (obj["metadata"].get("namespace", ""), obj["metadata"]["name"]) > start]
    token = None
    remaining = 0
    limit = int(query.get("limit") or 0)
    if limit > 0 and len(items) > limit:
        remaining = len(items) - limit
        items = items[:limit]
        last = items[-1]["metadata"]
        token = continue_token(last.get("namespace", ""), last["name"], list_rv)
    if request.as_table:
        body = tables.table(
            kind,
            [render(kind, obj) for obj in items],
            resource_version=str(list_rv),
            include_object=query.get("includeObject", "Metadata"),
            continue_token=token,
        )
        return json_response(body)
    metadata: dict[str, Any] = {"resourceVersion": str(list_rv)}
    if token:
        metadata["continue"] = token
        metadata["remainingItemCount"] = remaining
    if "as=PartialObjectMetadataList" in request.accept:
        return json_response(
            {
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": metadata,
                "items": [tables.partial_metadata(obj) for obj in items],
            }
        )
    if kind.custom:
        rendered = [render(kind, obj) for obj in items]
    else:  # typed lists of built-in kinds carry no apiVersion/kind on their items
        rendered = [{key: value for key, value in obj.items() if key not in ("apiVersion", "kind")} for obj in items]
    return json_response(
        {"kind": kind.list_kind, "apiVersion": kind.api_version, "metadata": metadata, "items": rendered}
    )


def continue_token(namespace: str, name: str, resource_version: int) -> str:
    raw = json.dumps({"start": [namespace, name], "rv": resource_version}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def parse_continue_token(token: str) -> tuple[tuple[str, str], int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return (data["start"][0], data["start"][1]), int(data["rv"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise errors.bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        ) from None
