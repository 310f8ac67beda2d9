"""An object's schema, and what the API server does with it before validation: prune and default.

Two sources of schemas, walked by the same code:

- custom resources: the CRD's structural `openAPIV3Schema` (Kubernetes' OpenAPI
  dialect: `nullable`, `x-kubernetes-int-or-string`, `x-kubernetes-preserve-
  unknown-fields`, list types, CEL rules in `x-kubernetes-validations`);
- built-in kinds: Kubernetes' own schemas, as bundled offline by
  `kubernetes-validate` (JSON Schema with `$ref`s into `_definitions.json`),
  which carry the strategic-merge-patch metadata (`x-kubernetes-patch-merge-key`,
  `x-kubernetes-patch-strategy`) of the real types.

Validation against these schemas is in schema_validation.py and cel_rules.py;
patches driven by them in patches.py.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from typing import Any

import jsonschema

# ObjectMeta fields a server keeps; anything else under metadata is pruned.
OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)


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
        return node

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
    registry = referencing.Registry().with_resource(
        definitions.get("$id", "https://kubernetes.io/api/_definitions.json"), resource
    )
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
