"""Turn a pydantic JSON Schema into a structural Kubernetes OpenAPI v3 schema.

Kubernetes stores a custom resource's schema as `openAPIV3Schema`, a dialect of
OpenAPI 3.0 with rules of its own ("structural schemas"): every node has a
type, nothing is referenced (`$ref`), `anyOf` may not carry types, null is
spelt `nullable: true`, exclusive bounds are booleans next to the bound, and
free-form objects say `x-kubernetes-preserve-unknown-fields: true`. pydantic
writes JSON Schema 2020-12. This module converts one into the other and
refuses, loudly, anything it does not know how to convert, so that a new field
type fails at `kascade crds` instead of on the API server.
"""

from __future__ import annotations

from typing import Any

# Keywords carried over as they are (after their sub-schemas are converted).
_KEPT = frozenset(
    {
        "type",
        "format",
        "description",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "required",
        "default",
    }
)
# The order keys are written in, for a readable CRD file; unlisted keys go last.
_KEY_ORDER = (
    "type",
    "format",
    "description",
    "enum",
    "default",
    "nullable",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "required",
    "properties",
    "additionalProperties",
    "items",
)
# Keywords dropped: documentation only, or meaningless in the Kubernetes dialect.
_DROPPED = frozenset({"title", "examples", "$defs", "definitions", "$schema", "deprecated", "readOnly", "writeOnly"})


class SchemaConversionError(ValueError):
    """The pydantic schema uses a construct a structural schema cannot express."""


def to_structural(schema: dict[str, Any]) -> dict[str, Any]:
    """Convert a pydantic JSON Schema (with its `$defs`) into a structural schema.

    Returns a new dict; the input is left alone.
    """
    defs = schema.get("$defs", {})
    return _convert(schema, defs, path="", seen=())


def _convert(node: dict[str, Any], defs: dict[str, Any], *, path: str, seen: tuple[str, ...]) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        node = _resolve_ref(node, defs, path=path, seen=seen)
        seen = (*seen, node.pop("__ref__"))
    if "anyOf" in node:
        return _convert_any_of(node, defs, path=path, seen=seen)
    if "allOf" in node:
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise SchemaConversionError(
                f"{path or '<root>'}: allOf with {len(parts)} schemas cannot be made structural"
            )
        return _convert({**parts[0], **node}, defs, path=path, seen=seen)
    if "const" in node:
        node["enum"] = [node.pop("const")]

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key.startswith("x-kubernetes-"):
            out[key] = value
        elif key == "properties":
            out[key] = {name: _convert(sub, defs, path=f"{path}.{name}", seen=seen) for name, sub in value.items()}
        elif key == "items":
            if not isinstance(value, dict):
                raise SchemaConversionError(f"{path}[]: tuple-style items cannot be made structural")
            out[key] = _convert(value, defs, path=f"{path}[]", seen=seen)
        elif key == "additionalProperties":
            pass  # decided below, once properties are known
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "default":
            if value is not None:  # `default: null` only restates "optional"
                out[key] = value
        elif key in _KEPT:
            out[key] = value
        else:
            raise SchemaConversionError(f"{path or '<root>'}: keyword {key!r} has no structural equivalent")

    _convert_additional_properties(node, out, defs, path=path, seen=seen)
    if out.get("type") == "string" and "enum" in out and "maxLength" not in out:
        # Bounds the cost the API server estimates for CEL rules that compare the value.
        out["maxLength"] = max(len(str(v)) for v in out["enum"])
    if "type" not in out and not (
        out.get("x-kubernetes-preserve-unknown-fields") or out.get("x-kubernetes-int-or-string")
    ):
        if not node or set(node) <= _DROPPED | {"description", "default"}:
            # `Any`: anything goes, and the server must keep it.
            out["x-kubernetes-preserve-unknown-fields"] = True
        else:
            raise SchemaConversionError(f"{path or '<root>'}: a node without a type is not structural: {node}")
    return _ordered(out)


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    rank = {key: index for index, key in enumerate(_KEY_ORDER)}
    return {key: node[key] for key in sorted(node, key=lambda key: (rank.get(key, len(rank)), key))}


def _resolve_ref(node: dict[str, Any], defs: dict[str, Any], *, path: str, seen: tuple[str, ...]) -> dict[str, Any]:
    ref = node.pop("$ref")
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix) :] not in defs:
        raise SchemaConversionError(f"{path or '<root>'}: cannot resolve {ref!r}")
    name = ref[len(prefix) :]
    if name in seen:
        raise SchemaConversionError(f"{path}: {name} refers to itself; recursive types cannot be structural")
    # The referring node's own keys (description, default) win over the definition's.
    return {**defs[name], **node, "__ref__": name}


def _convert_any_of(node: dict[str, Any], defs: dict[str, Any], *, path: str, seen: tuple[str, ...]) -> dict[str, Any]:
    """`X | None` becomes X with `nullable: true`; any other union is refused."""
    options = node.pop("anyOf")
    non_null = [option for option in options if option != {"type": "null"}]
    if len(non_null) != 1:
        raise SchemaConversionError(
            f"{path or '<root>'}: a union of {len(non_null)} types cannot be made structural; "
            "use one type, or an int-or-string quantity"
        )
    out = _convert({**non_null[0], **node}, defs, path=path, seen=seen)
    if len(non_null) < len(options) and "enum" not in out:
        # Kubernetes' validator checks an enum against null too, so a nullable enum would
        # not help; an optional enum field is simply left out instead of set to null.
        out["nullable"] = True
    return _ordered(out)


def _convert_additional_properties(
    node: dict[str, Any], out: dict[str, Any], defs: dict[str, Any], *, path: str, seen: tuple[str, ...]
) -> None:
    extra = node.get("additionalProperties")
    if "properties" in node:
        # Fixed fields: Kubernetes prunes unknown ones (and strict field validation refuses them).
        return
    if out.get("type") != "object" or extra is False:
        return
    if extra is None or extra is True or extra == {}:
        out["x-kubernetes-preserve-unknown-fields"] = True
        return
    out["additionalProperties"] = _convert(extra, defs, path=f"{path}.*", seen=seen)
