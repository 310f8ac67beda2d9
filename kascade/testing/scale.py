"""The scale subresource: an autoscaling/v1 Scale over a kind's replicas (what `kubectl scale` and HPAs use).

Which fields hold the replicas and the selector comes from the kind
(`Kind.scale`: the CRD's `subresources.scale` paths, or the built-in kinds' own).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import aiohttp.web
import jsonpatch

from kascade.testing import errors
from kascade.testing.errors import ApiError
from kascade.testing.kinds import Kind
from kascade.testing.patches import json_merge_patch
from kascade.testing.routing import ResourceRequest
from kascade.testing.store import Store
from kascade.testing.wire import PATCH_TYPES, json_response, media_type, parse_body


def scale_of(kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
    assert kind.scale is not None
    spec_path, status_path, selector_path = kind.scale
    meta = obj["metadata"]
    selector: Any = _get_path(obj, selector_path) if selector_path else None
    if isinstance(selector, dict):  # a LabelSelector object, shown as its string form
        match_labels = selector.get("matchLabels") or {}
        selector = ",".join(f"{key}={value}" for key, value in sorted(match_labels.items()))
    status: dict[str, Any] = {"replicas": _get_path(obj, status_path) or 0}
    if selector:
        status["selector"] = selector
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            key: meta[key]
            for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if key in meta
        },
        "spec": {"replicas": _get_path(obj, spec_path) or 0},
        "status": status,
    }


def serve_scale(store: Store, request: ResourceRequest) -> aiohttp.web.Response:
    """GET, PUT or PATCH the Scale; a write sets the object's replicas through the update pipeline."""
    kind, route = request.kind, request.route
    assert kind.scale is not None and route.name is not None
    obj = store.require(kind, route.namespace, route.name)
    scale = scale_of(kind, obj)
    if request.method == "GET":
        request.record.verb = "get"
        return json_response(scale)
    wanted = _wanted_scale(request, scale)
    if not isinstance(wanted, dict):
        raise errors.bad_request("a Scale must be a JSON object")
    precondition = (wanted.get("metadata") or {}).get("resourceVersion")
    if precondition and precondition != obj["metadata"]["resourceVersion"]:
        raise errors.conflict(kind.plural, kind.group, route.name)
    replicas = (wanted.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        raise errors.invalid(
            "Scale",
            "autoscaling",
            route.name,
            [
                errors.Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {json.dumps(replicas)}: must be greater than or equal to 0",
                    "spec.replicas",
                )
            ],
        )
    updated = copy.deepcopy(obj)
    _set_path(updated, kind.scale[0], replicas)
    result = store.update(
        kind, route.namespace, route.name, updated, require_precondition=False, dry_run=request.dry_run
    )
    return json_response(scale_of(kind, result.obj))


def _wanted_scale(request: ResourceRequest, scale: dict[str, Any]) -> Any:
    """The Scale a PUT sends, or the current one with a PATCH applied (merge semantics for all but JSON patch)."""
    if request.method == "PUT":
        request.record.verb = "update"
        return request.parsed_body()
    if request.method != "PATCH":
        raise errors.method_not_allowed()
    request.record.verb = "patch"
    media = media_type(request.content_type)
    patch_type = PATCH_TYPES.get(media)
    patch = parse_body(request.body, media)
    if patch_type == "json" and isinstance(patch, list):
        try:
            return jsonpatch.apply_patch(scale, patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
            raise ApiError(
                422, "Invalid", f"the server rejected our request due to an error in our request: {error}"
            ) from None
    if patch_type in ("merge", "strategic", "apply") and isinstance(patch, dict):
        return json_merge_patch(scale, patch)
    raise errors.unsupported_media_type(media, list(PATCH_TYPES)[:3])


def _get_path(obj: Any, path: str) -> Any:
    for part in [p for p in path.split(".") if p]:
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = [p for p in path.split(".") if p]
    for part in parts[:-1]:
        obj = obj.setdefault(part, {})
    obj[parts[-1]] = value
