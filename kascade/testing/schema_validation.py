"""Validation against an object's schema, worded and classified as the API server reports it.

- OpenAPI: Kubernetes' v3 dialect converted to JSON Schema and checked with
  `jsonschema`; each refusal becomes a `Cause` with the server's reason
  (FieldValueRequired, FieldValueNotSupported, ...) and message;
- list types: duplicates in `x-kubernetes-list-type: map` and `set` lists.

The dialect conversion follows tests/api/crd_testkit.py (moved here so that the
stand-in needs no test code). CEL rules are in cel_rules.py.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import jsonschema

from kascade.api.errors import field_path
from kascade.testing.errors import Cause
from kascade.testing.schemas import SchemaTree

# --- OpenAPI schema ------------------------------------------------------------------


def to_jsonschema(node: dict[str, Any], *, refuse_unknown: bool = False) -> dict[str, Any]:
    """Kubernetes' OpenAPI v3 dialect -> JSON Schema 2020-12.

    nullable -> null allowed; int-or-string -> integer or string; boolean
    exclusive bounds -> numeric ones; x-kubernetes-* keys otherwise ignored.
    Unknown fields are not refused by default: the server prunes them first.
    `refuse_unknown` refuses them where the schema does not preserve them, as
    `kubectl apply`'s strict field validation does (and the CRD tests check).
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in {"nullable", "exclusiveMinimum", "exclusiveMaximum"}:
            continue
        if key == "properties":
            out[key] = {name: to_jsonschema(sub, refuse_unknown=refuse_unknown) for name, sub in value.items()}
        elif key in {"items", "additionalProperties"} and isinstance(value, dict):
            out[key] = to_jsonschema(value, refuse_unknown=refuse_unknown)
        elif key in {"allOf", "anyOf", "oneOf"}:
            out[key] = [to_jsonschema(sub, refuse_unknown=refuse_unknown) for sub in value]
        elif key == "not":
            out[key] = to_jsonschema(value, refuse_unknown=refuse_unknown)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if node.get("exclusiveMaximum") is True:
        out["exclusiveMaximum"] = out.pop("maximum")
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    if refuse_unknown and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


_BOUND_WORDS = {
    "minimum": "greater than or equal to",
    "exclusiveMinimum": "greater than",
    "maximum": "less than or equal to",
    "exclusiveMaximum": "less than",
}


def _json(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return '"object"' if isinstance(value, dict) else '"array"'
    return json.dumps(value)


def json_type_name(value: Any) -> str:
    """The JSON type of `value`, as the server names it in a refusal."""
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int():
            return "integer"
        case float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
    return "object"


def schema_causes(validator: jsonschema.protocols.Validator, data: Any) -> list[Cause]:
    """The schema's refusals of `data`, worded and classified like the server's."""
    causes: list[Cause] = []
    for error in sorted(validator.iter_errors(data), key=lambda e: (field_path(e.absolute_path), e.validator)):
        causes.extend(_cause(error))
    return causes


def _cause(error: jsonschema.ValidationError) -> list[Cause]:
    path = field_path(error.absolute_path)
    shown = path or "<root>"
    value = error.instance
    match error.validator:
        case "required":
            missing = [name for name in error.validator_value if isinstance(value, dict) and name not in value]
            return [
                Cause("FieldValueRequired", "Required value", f"{path}.{name}" if path else name) for name in missing
            ]
        case "enum":
            supported = ", ".join(json.dumps(option) for option in error.validator_value)
            return [
                Cause(
                    "FieldValueNotSupported", f"Unsupported value: {_json(value)}: supported values: {supported}", path
                )
            ]
        case "type":
            expected = error.validator_value if isinstance(error.validator_value, str) else error.validator_value[0]
            return [
                Cause(
                    "FieldValueTypeInvalid",
                    f'Invalid value: "{json_type_name(value)}": {shown} in body must be of type {expected}: "{json_type_name(value)}"',
                    path,
                )
            ]
        case "maxLength":
            return [Cause("FieldValueTooLong", f"Too long: may not be more than {error.validator_value} bytes", path)]
        case "maxItems" | "maxProperties":
            return [
                Cause(
                    "FieldValueTooMany",
                    f"Too many: {len(value)}: must have at most {error.validator_value} items",
                    path,
                )
            ]
        case "minimum" | "exclusiveMinimum" | "maximum" | "exclusiveMaximum":
            word = _BOUND_WORDS[error.validator]
            return [
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {_json(value)}: {shown} in body should be {word} {error.validator_value}",
                    path,
                )
            ]
        case "minLength":
            return [
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {_json(value)}: {shown} in body should be at least {error.validator_value} chars long",
                    path,
                )
            ]
        case "minItems":
            return [
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {len(value)}: {shown} in body should have at least {error.validator_value} items",
                    path,
                )
            ]
        case "pattern":
            return [
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {_json(value)}: {shown} in body should match '{error.validator_value}'",
                    path,
                )
            ]
        case "oneOf" | "anyOf" if error.context:
            return _cause(min(error.context, key=lambda sub: len(sub.path)))
    return [Cause("FieldValueInvalid", f"Invalid value: {_json(value)}: {error.message}", path)]


@functools.cache
def _crd_validator(schema_json: str) -> jsonschema.Draft202012Validator:
    schema = to_jsonschema(json.loads(schema_json))
    return jsonschema.Draft202012Validator(schema)


def crd_validator(schema: Mapping[str, Any]) -> jsonschema.Draft202012Validator:
    return _crd_validator(json.dumps(schema, sort_keys=True))


# --- list types ----------------------------------------------------------------------


def list_type_causes(tree: SchemaTree, data: Any) -> list[Cause]:
    """Duplicates in `x-kubernetes-list-type: map` (by its keys) and `set` lists: FieldValueDuplicate."""
    causes: list[Cause] = []
    _list_types(tree, tree.root, data, "", causes)
    return causes


def _list_types(tree: SchemaTree, node: Any, data: Any, path: str, causes: list[Cause]) -> None:
    node = tree.resolve(node)
    if isinstance(data, dict):
        for key, value in data.items():
            sub = tree.property(node, key)
            if sub is not None:
                _list_types(tree, sub, value, f"{path}.{key}" if path else key, causes)
    elif isinstance(data, list):
        list_type = node.get("x-kubernetes-list-type")
        keys = node.get("x-kubernetes-list-map-keys") or []
        seen: set[str] = set()
        for index, item in enumerate(data):
            if list_type == "map" and isinstance(item, dict):
                identity = json.dumps({key: item.get(key) for key in keys}, sort_keys=True)
            elif list_type == "set":
                identity = json.dumps(item, sort_keys=True)
            else:
                identity = None
            if identity is not None:
                if identity in seen:
                    causes.append(Cause("FieldValueDuplicate", f"Duplicate value: {identity}", f"{path}[{index}]"))
                seen.add(identity)
            _list_types(tree, node.get("items") or {}, item, f"{path}[{index}]", causes)
