"""What a write's body goes through before it may be stored: decoding, then pruning, defaulting and validation.

Pure functions of the kind, the old object (None on create) and the new one:
no storage is read here. Refusals are `ApiError`s with the real server's
wording: 400 for a body that does not decode (or, with
`fieldValidation=Strict`, carries unknown fields), 422 Invalid with field
paths for one that decodes but breaks the schema, its CEL rules or the
built-in kinds' semantic checks.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from kascade.testing import errors
from kascade.testing.builtin_defaults import Allocator, canonicalize_quantities, default_builtin
from kascade.testing.builtin_validation import validate_builtin
from kascade.testing.cel_rules import cel_causes
from kascade.testing.errors import Cause
from kascade.testing.kinds import Kind
from kascade.testing.object_meta import validate_metadata
from kascade.testing.schema_validation import crd_validator, list_type_causes, schema_causes
from kascade.testing.schemas import SchemaTree, apply_defaults, builtin_schema, prune


def schema_of(kind: Kind) -> tuple[SchemaTree, Any] | None:
    """The kind's schema and its validator: the CRD's for custom resources, Kubernetes' own for built-in kinds."""
    if kind.custom:
        assert kind.schema is not None
        return SchemaTree(kind.schema, structural=True), crd_validator(kind.schema)
    return builtin_schema(kind.kind, kind.group, kind.version)


def decode_object(kind: Kind, body: Any) -> dict[str, Any]:
    """A copy of `body` as an object of `kind`: apiVersion and kind checked and filled in, metadata an object."""
    if not isinstance(body, dict):
        raise errors.bad_request(f"the body of the request is not a JSON object: {json.dumps(body)[:100]}")
    api_version, kind_name = body.get("apiVersion"), body.get("kind")
    if (api_version and api_version != kind.api_version) or (kind_name and kind_name != kind.kind):
        raise errors.bad_request(
            f"the API version in the data ({api_version}) does not match the expected API version ({kind.api_version})"
            if api_version != kind.api_version
            else f"the kind in the data ({kind_name}) does not match the expected kind ({kind.kind})"
        )
    body = copy.deepcopy(body)
    body["apiVersion"], body["kind"] = kind.api_version, kind.kind
    if body.get("metadata") is None:
        body["metadata"] = {}
    if not isinstance(body["metadata"], dict):
        raise errors.bad_request(
            f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: metadata must be an object'
        )
    return body


def place_in_namespace(kind: Kind, namespace: str | None, body: dict[str, Any]) -> str:
    """Set the body's namespace from the URL (400 when they disagree); returns it ("" for cluster-scoped kinds)."""
    meta = body["metadata"]
    if not kind.namespaced:
        meta.pop("namespace", None)
        return ""
    if meta.get("namespace") and namespace and meta["namespace"] != namespace:
        raise errors.bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    namespace = namespace or meta.get("namespace")
    if not namespace:
        raise errors.bad_request("the namespace of the object is missing")
    meta["namespace"] = namespace
    return namespace


def admit(
    kind: Kind, old: dict[str, Any] | None, obj: dict[str, Any], field_validation: str, allocator: Allocator
) -> tuple[dict[str, Any], list[str]]:
    """Prune, default and validate `obj` as the server would; returns it and the warnings."""
    schema = schema_of(kind)
    name = (obj.get("metadata") or {}).get("name") or ""
    warnings: list[str] = []
    if schema is not None:
        obj, warnings = _prune_and_default(kind, schema[0], obj, field_validation)
    if not kind.custom:
        default_builtin(kind, obj, old, allocator)
    causes = _causes(kind, schema, old, obj)
    if causes:
        unique = list({(cause.field, cause.reason, cause.message): cause for cause in causes}.values())
        raise errors.invalid(kind.kind, kind.group, name, unique)
    return obj, warnings


def _prune_and_default(
    kind: Kind, tree: SchemaTree, obj: dict[str, Any], field_validation: str
) -> tuple[dict[str, Any], list[str]]:
    unknown: list[str] = []
    obj = prune(tree, obj, unknown)
    if unknown and field_validation == "Strict":
        listed = ", ".join(f'unknown field "{path}"' for path in unknown)
        raise errors.bad_request(
            f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: strict decoding error: {listed}'
        )
    warnings = [f'unknown field "{path}"' for path in unknown] if field_validation != "Ignore" else []
    obj = apply_defaults(tree, obj) if kind.custom else canonicalize_quantities(tree, obj)
    return obj, warnings


def _causes(
    kind: Kind, schema: tuple[SchemaTree, Any] | None, old: dict[str, Any] | None, obj: dict[str, Any]
) -> list[Cause]:
    causes: list[Cause] = validate_metadata(kind, obj, old)
    if schema is not None:
        tree, validator = schema
        # ObjectMeta is checked by validate_metadata, with the real server's wording.
        # Built-in status is written by kubelets and controllers, whose required fields the server does not check.
        found = [
            cause
            for cause in schema_causes(validator, obj)
            if not cause.field.startswith("metadata")
            and not (not kind.custom and cause.field.startswith("status") and cause.reason == "FieldValueRequired")
        ]
        if not kind.custom:
            type_errors = [cause for cause in found if cause.reason == "FieldValueTypeInvalid"]
            if type_errors:  # a built-in type does not even decode
                first = type_errors[0]
                raise errors.bad_request(
                    f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
                    f"json: cannot unmarshal into Go value at {first.field}: {first.message}"
                )
        causes += found
        causes += list_type_causes(tree, obj)
        if kind.custom and not found:
            causes += cel_causes(tree, obj, old)
    if not kind.custom:
        causes += validate_builtin(kind, obj, old)
    return causes


def spec_changed(kind: Kind, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether an update bumps `metadata.generation`, by the real registry's rule for the kind."""
    if kind.custom:
        ignored = {"metadata", "status"} if kind.status_subresource else {"metadata"}

        def strip(obj: dict[str, Any]) -> dict[str, Any]:
            return {key: value for key, value in obj.items() if key not in ignored}

        return strip(old) != strip(new)
    changed = old.get("spec") != new.get("spec")
    if kind.plural == "deployments":  # annotations are copied to ReplicaSets, so they bump it too
        changed = changed or (old["metadata"].get("annotations") != new["metadata"].get("annotations"))
    return changed
