"""How a patch changes an object: JSON patch, JSON merge patch, strategic merge patch and (simplified) apply.

`apply_patch` picks one by the request's patch type; the result then goes
through the same update path as a PUT (store.py).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch

from kascade.testing import errors
from kascade.testing.admission import schema_of
from kascade.testing.errors import ApiError
from kascade.testing.kinds import Kind
from kascade.testing.schemas import SchemaTree

_DELETE = object()  # a strategic-merge `$patch: delete` on a map
_KEY_DEFAULTS = {"protocol": "TCP"}  # defaulted list-map key fields of built-in types


def apply_patch(kind: Kind, old: dict[str, Any], patch_type: str, body: Any) -> dict[str, Any]:
    """`old` with the patch applied (`json`, `merge`, `strategic` or `apply`); 400/422 for a patch that does not apply."""
    if patch_type == "json":
        if not isinstance(body, list):
            raise errors.bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        try:
            patched = jsonpatch.apply_patch(copy.deepcopy(old), body)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
            raise ApiError(
                422, "Invalid", f"the server rejected our request due to an error in our request: {error}"
            ) from None
    elif patch_type == "merge":
        if not isinstance(body, dict):
            raise errors.bad_request("a merge patch must be a JSON object")
        patched = json_merge_patch(old, body)
    elif patch_type in ("strategic", "apply"):
        if not isinstance(body, dict):
            raise errors.bad_request("a strategic merge patch must be a JSON object")
        schema = schema_of(kind)
        tree = schema[0] if schema else SchemaTree({}, structural=False)
        patched = strategic_merge_patch(tree, old, body, apply=patch_type == "apply")
    else:  # pragma: no cover
        raise errors.unsupported_media_type(patch_type, [])
    if not isinstance(patched, dict):
        raise errors.bad_request("the patch did not produce an object")
    return patched


def json_merge_patch(original: Any, patch: Any) -> Any:
    """RFC 7386 (application/merge-patch+json): maps merge, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(tree: SchemaTree, original: Any, patch: Any, *, apply: bool = False) -> Any:
    """application/strategic-merge-patch+json, driven by the type's patch metadata.

    Lists with `x-kubernetes-patch-strategy: merge` merge by their
    `x-kubernetes-patch-merge-key` (containers by name, container ports by
    containerPort, Service ports by port, env by name, volumes by name...);
    primitive lists with that strategy (finalizers) take the union; other lists
    are replaced. Directives: `$patch: replace|delete|merge`, `$retainKeys`,
    `$deleteFromPrimitiveList/<field>`; `$setElementOrder/<field>` is accepted
    and ignored (new items are appended). With `apply=True` (server-side apply,
    simplified), `x-kubernetes-list-type: map` lists merge by their map keys
    and `set` lists take the union.
    """
    merged = _smp_map(tree, tree.root, original if isinstance(original, dict) else {}, patch, apply)
    return {} if merged is _DELETE else merged


def _smp_map(tree: SchemaTree, node: Any, original: dict[str, Any], patch: dict[str, Any], apply: bool) -> Any:
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return _strip_directives({key: value for key, value in patch.items() if key != "$patch"})
    result = copy.deepcopy(original)
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [item for item in result.get(field) or [] if item not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        sub = tree.property(node, key) or {}
        if isinstance(value, list):
            result[key] = _smp_list(tree, sub, result.get(key), value, apply)
        elif isinstance(value, dict) and sub.get("x-kubernetes-map-type") != "atomic":
            current = result.get(key)
            merged = _smp_map(tree, sub, current if isinstance(current, dict) else {}, value, apply)
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = _strip_directives(value)
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {key: value for key, value in result.items() if key in retain}
    return result


def _smp_list(tree: SchemaTree, node: Mapping[str, Any], original: Any, patch: list[Any], apply: bool) -> list[Any]:
    original = original if isinstance(original, list) else []
    strategies = str(node.get("x-kubernetes-patch-strategy", "")).split(",")
    merge_key = node.get("x-kubernetes-patch-merge-key")
    keys: list[str] = [merge_key] if merge_key else []
    list_type = node.get("x-kubernetes-list-type")
    merging = "merge" in strategies
    if apply and list_type == "map":
        merging, keys = True, list(node.get("x-kubernetes-list-map-keys") or keys)
    if apply and list_type == "set":
        merging = True
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [
            _strip_directives(item)
            for item in patch
            if not (isinstance(item, dict) and item.get("$patch") == "replace")
        ]
    if not merging:
        return [_strip_directives(item) for item in patch]
    if not keys:  # a primitive list merged as a set, e.g. finalizers
        return copy.deepcopy(original) + [item for item in patch if item not in original]
    items = tree.items(node)
    result = copy.deepcopy(original)
    # A key field left out takes its default (a port's protocol is TCP), so it still matches the stored item.
    key_defaults = {key: (tree.property(items, key) or {}).get("default", _KEY_DEFAULTS.get(key)) for key in keys}

    def identity(item: Any) -> Any:
        return tuple(item.get(key, key_defaults[key]) for key in keys) if isinstance(item, dict) else item

    for item in patch:
        if not isinstance(item, dict):
            continue
        position = next((index for index, old in enumerate(result) if identity(old) == identity(item)), None)
        if item.get("$patch") == "delete":
            result = [old for old in result if identity(old) != identity(item)]
        elif position is None:
            result.append(_strip_directives(item))
        else:
            merged = _smp_map(tree, items, result[position], item, apply)
            result[position] = merged
    return [item for item in result if item is not _DELETE]


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _strip_directives(sub) for key, sub in value.items() if not key.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(item) for item in value]
    return value
