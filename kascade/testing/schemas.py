"""What the API server does with an object's schema: prune, default, validate, merge.

Two sources of schemas, walked by the same code:

- custom resources: the CRD's structural `openAPIV3Schema` (Kubernetes' OpenAPI
  dialect: `nullable`, `x-kubernetes-int-or-string`, `x-kubernetes-preserve-
  unknown-fields`, list types, CEL rules in `x-kubernetes-validations`);
- built-in kinds: Kubernetes' own schemas, as bundled offline by
  `kubernetes-validate` (JSON Schema with `$ref`s into `_definitions.json`),
  which carry the strategic-merge-patch metadata (`x-kubernetes-patch-merge-key`,
  `x-kubernetes-patch-strategy`) of the real types.

The Kubernetes-dialect → JSON Schema conversion and the CEL evaluation follow
tests/api/crd_testkit.py (moved here so that the stand-in needs no test code).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from typing import Any

import celpy
import jsonschema

from kascade.testing.errors import Cause

# ObjectMeta fields a server keeps; anything else under metadata is pruned.
OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
})

_DELETE = object()  # a strategic-merge `$patch: delete` on a map
_KEY_DEFAULTS = {"protocol": "TCP"}  # defaulted list-map key fields of built-in types


class SchemaTree:
    """A schema with the definitions its `$ref`s point into (none for CRD schemas)."""

    def __init__(self, root: Mapping[str, Any], definitions: Mapping[str, Any] | None = None, *, structural: bool):
        self.root = root
        self.definitions = definitions or {}
        # Structural (CRD) schemas prune every field they do not declare; Kubernetes' own
        # schemas leave some objects open (free-form `type: object`).
        self.structural = structural

    def resolve(self, node: Any) -> dict[str, Any]:
        if not isinstance(node, Mapping):
            return {}
        while "$ref" in node:
            target = self.definitions.get(node["$ref"].rsplit("/", 1)[-1], {})
            node = {**target, **{key: value for key, value in node.items() if key not in ("$ref", "description")}}
        return node  # type: ignore[return-value]

    def property(self, node: Mapping[str, Any], key: str) -> dict[str, Any] | None:
        """The schema of `key` inside object `node`; None when the key is not declared."""
        node = self.resolve(node)
        properties = node.get("properties") or {}
        if key in properties:
            return self.resolve(properties[key])
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping):
            return self.resolve(extra)
        return None

    def items(self, node: Mapping[str, Any]) -> dict[str, Any]:
        return self.resolve(self.resolve(node).get("items") or {})


def _types(node: Mapping[str, Any]) -> set[str]:
    declared = node.get("type")
    return set(declared) if isinstance(declared, list) else {declared} if declared else set()


# --- pruning -----------------------------------------------------------------


def prune(tree: SchemaTree, data: Any, unknown: list[str]) -> Any:
    """A copy of `data` without the fields the schema does not declare; their paths go to `unknown`."""
    return _prune(tree, tree.root, data, "", unknown, top=True)


def _prune(tree: SchemaTree, node: Any, data: Any, path: str, unknown: list[str], *, top: bool = False) -> Any:
    node = tree.resolve(node)
    if isinstance(data, dict):
        properties = node.get("properties")
        extra = node.get("additionalProperties")
        preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
        embedded = node.get("x-kubernetes-embedded-resource") is True
        undeclared = properties is None and extra is None and not preserve and not embedded and not top
        if undeclared and (not tree.structural or "type" not in node):
            return copy.deepcopy(data)  # a free-form object of a built-in type
        out: dict[str, Any] = {}
        for key, value in data.items():
            child = f"{path}.{key}" if path else key
            if (top or embedded) and tree.structural and key == "metadata" and isinstance(value, dict):
                out[key] = _prune_metadata(value, child, unknown)
            elif (top or embedded) and key in ("apiVersion", "kind") and not (properties and key in properties):
                out[key] = value
            elif properties and key in properties:
                out[key] = _prune(tree, properties[key], value, child, unknown)
            elif isinstance(extra, Mapping):
                out[key] = _prune(tree, extra, value, child, unknown)
            elif extra is True or preserve:
                out[key] = copy.deepcopy(value)
            else:
                unknown.append(child)
        return out
    if isinstance(data, list) and "items" in node:
        return [_prune(tree, node["items"], item, f"{path}[{index}]", unknown) for index, item in enumerate(data)]
    return copy.deepcopy(data)


def _prune_metadata(metadata: dict[str, Any], path: str, unknown: list[str]) -> dict[str, Any]:
    kept = {}
    for key, value in metadata.items():
        if key in OBJECT_META_FIELDS:
            kept[key] = copy.deepcopy(value)
        else:
            unknown.append(f"{path}.{key}")
    return kept


# --- defaulting ----------------------------------------------------------------


def apply_defaults(tree: SchemaTree, data: Any) -> Any:
    """A copy with schema defaults filled in, the way the API server defaults custom resources.

    A null in a non-nullable field takes the default if there is one, and is
    dropped otherwise (the server prunes such nulls before defaulting).
    """
    data = copy.deepcopy(data)
    _default(tree, tree.root, data)
    return data


def _default(tree: SchemaTree, node: Any, data: Any) -> None:
    node = tree.resolve(node)
    if isinstance(data, dict):
        for key, sub in (node.get("properties") or {}).items():
            sub = tree.resolve(sub)
            if tree.structural and key in data and data[key] is None and not sub.get("nullable"):
                del data[key]
            if key not in data and "default" in sub:
                data[key] = copy.deepcopy(sub["default"])
            if key in data:
                _default(tree, sub, data[key])
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping):
            for value in data.values():
                _default(tree, extra, value)
    elif isinstance(data, list) and isinstance(node.get("items"), Mapping):
        for item in data:
            _default(tree, node["items"], item)


# --- validation: OpenAPI schema ---------------------------------------------------


def to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """Kubernetes' OpenAPI v3 dialect -> JSON Schema 2020-12 (as in tests/api/crd_testkit.py).

    nullable -> null allowed; int-or-string -> integer or string; boolean
    exclusive bounds -> numeric ones; x-kubernetes-* keys otherwise ignored.
    Unknown fields are not refused here: the server prunes them first.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in {"nullable", "exclusiveMinimum", "exclusiveMaximum"}:
            continue
        if key == "properties":
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in {"items", "additionalProperties"} and isinstance(value, dict):
            out[key] = to_jsonschema(value)
        elif key in {"allOf", "anyOf", "oneOf"}:
            out[key] = [to_jsonschema(sub) for sub in value]
        elif key == "not":
            out[key] = to_jsonschema(value)
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
    return out


def field_path(parts: Any) -> str:
    """jsonschema's path (deque of keys and indexes) -> `spec.tiers[0].name`."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _json(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return '"object"' if isinstance(value, dict) else '"array"'
    return json.dumps(value)


def _json_type(value: Any) -> str:
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
            return [Cause("FieldValueRequired", "Required value", f"{path}.{name}" if path else name) for name in missing]
        case "enum":
            supported = ", ".join(json.dumps(option) for option in error.validator_value)
            return [Cause("FieldValueNotSupported", f"Unsupported value: {_json(value)}: supported values: {supported}", path)]
        case "type":
            expected = error.validator_value if isinstance(error.validator_value, str) else error.validator_value[0]
            return [Cause("FieldValueTypeInvalid",
                          f'Invalid value: "{_json_type(value)}": {shown} in body must be of type {expected}: "{_json_type(value)}"',
                          path)]
        case "maxLength":
            return [Cause("FieldValueTooLong", f"Too long: may not be more than {error.validator_value} bytes", path)]
        case "maxItems":
            return [Cause("FieldValueTooMany", f"Too many: {len(value)}: must have at most {error.validator_value} items", path)]
        case "maxProperties":
            return [Cause("FieldValueTooMany", f"Too many: {len(value)}: must have at most {error.validator_value} items", path)]
        case "minimum" | "exclusiveMinimum":
            word = "greater than or equal to" if error.validator == "minimum" else "greater than"
            return [Cause("FieldValueInvalid", f"Invalid value: {_json(value)}: {shown} in body should be {word} {error.validator_value}", path)]
        case "maximum" | "exclusiveMaximum":
            word = "less than or equal to" if error.validator == "maximum" else "less than"
            return [Cause("FieldValueInvalid", f"Invalid value: {_json(value)}: {shown} in body should be {word} {error.validator_value}", path)]
        case "minLength":
            return [Cause("FieldValueInvalid", f"Invalid value: {_json(value)}: {shown} in body should be at least {error.validator_value} chars long", path)]
        case "minItems":
            return [Cause("FieldValueInvalid", f"Invalid value: {len(value)}: {shown} in body should have at least {error.validator_value} items", path)]
        case "pattern":
            return [Cause("FieldValueInvalid", f"Invalid value: {_json(value)}: {shown} in body should match '{error.validator_value}'", path)]
        case "oneOf" | "anyOf" if error.context:
            return _cause(min(error.context, key=lambda sub: len(sub.path)))
    return [Cause("FieldValueInvalid", f"Invalid value: {_json(value)}: {error.message}", path)]


@functools.cache
def _crd_validator(schema_json: str) -> jsonschema.Draft202012Validator:
    schema = to_jsonschema(json.loads(schema_json))
    return jsonschema.Draft202012Validator(schema)


def crd_validator(schema: Mapping[str, Any]) -> jsonschema.Draft202012Validator:
    return _crd_validator(json.dumps(schema, sort_keys=True))


# --- validation: list types ----------------------------------------------------------


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


# --- validation: CEL rules ------------------------------------------------------------


@functools.cache
def _cel_program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel_true(result: Any) -> bool:
    return result is True or (isinstance(result, celpy.celtypes.BoolType) and bool(result))


def cel_causes(tree: SchemaTree, data: Any, old: Any = None) -> list[Cause]:
    """The `x-kubernetes-validations` rules `data` breaks (after defaulting), as the server reports them.

    Transition rules (those that mention `oldSelf`) run only on updates, where
    the old object has a value at the same place (list items: same index).
    """
    causes: list[Cause] = []
    _check_cel(tree, tree.root, data, old, "", causes)
    return causes


def _check_cel(tree: SchemaTree, node: Any, data: Any, old: Any, path: str, causes: list[Cause]) -> None:
    node = tree.resolve(node)
    if data is None:
        return
    for rule in node.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        activation = {"self": celpy.json_to_cel(data)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            passed = _cel_true(_cel_program(rule["rule"]).evaluate(activation))
        except celpy.CELEvalError:  # the server reports evaluation errors as failures too
            passed = False
        if not passed:
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            if rule.get("messageExpression"):
                try:
                    message = str(_cel_program(rule["messageExpression"]).evaluate(activation))
                except celpy.CELEvalError:
                    pass
            where = path + rule.get("fieldPath", "") if rule.get("fieldPath") else path
            reason = {"FieldValueRequired": "FieldValueRequired", "FieldValueDuplicate": "FieldValueDuplicate",
                      "FieldValueForbidden": "FieldValueForbidden"}.get(rule.get("reason", ""), "FieldValueInvalid")
            causes.append(Cause(reason, f'Invalid value: "{_json_type(data)}": {message}', where.lstrip(".")))
    if isinstance(data, dict):
        for key, value in data.items():
            sub = tree.property(node, key)
            if sub is not None:
                old_value = old.get(key) if isinstance(old, dict) else None
                _check_cel(tree, sub, value, old_value, f"{path}.{key}" if path else key, causes)
    elif isinstance(data, list) and node.get("items"):
        for index, item in enumerate(data):
            old_item = old[index] if isinstance(old, list) and index < len(old) else None
            _check_cel(tree, node["items"], item, old_item, f"{path}[{index}]", causes)


# --- merging -------------------------------------------------------------------------


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
        return [_strip_directives(item) for item in patch if not (isinstance(item, dict) and item.get("$patch") == "replace")]
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


# --- Kubernetes' own schemas (built-in kinds) -------------------------------------------


@functools.cache
def _builtin_definitions() -> tuple[Any, dict[str, Any], Any] | None:
    try:
        import kubernetes_validate  # a dev dependency; without it built-in kinds are not schema-checked
        import referencing
        import referencing.jsonschema
    except ImportError:  # pragma: no cover
        return None
    from pathlib import Path

    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    versions = sorted((p for p in folder.iterdir() if p.name.endswith("-local")), key=lambda p: _version_key(p.name))
    if not versions:  # pragma: no cover
        return None
    latest = versions[-1]
    definitions = json.loads((latest / "_definitions.json").read_text())
    resource = referencing.Resource.from_contents(definitions, default_specification=referencing.jsonschema.DRAFT202012)
    registry = referencing.Registry().with_resource(definitions.get("$id", "https://kubernetes.io/api/_definitions.json"), resource)
    return (latest, definitions, registry)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.lstrip("v").split("-")[0].split("."))


@functools.cache
def builtin_schema(kind: str, group: str, version: str) -> tuple[SchemaTree, jsonschema.Draft202012Validator] | None:
    """Kubernetes' schema for a built-in kind, with a validator; None when it is not bundled."""
    loaded = _builtin_definitions()
    if loaded is None:
        return None
    folder, definitions, registry = loaded
    group_part = f"-{group.split('.')[0]}" if group else ""
    path = folder / f"{kind.lower()}{group_part}-{version}.json"
    if not path.is_file():
        return None
    root = json.loads(path.read_text())
    validator = jsonschema.Draft202012Validator(root, registry=registry)
    return SchemaTree(root, definitions["$defs"], structural=False), validator

