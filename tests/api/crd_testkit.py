"""Check manifests the way the API server would, with no API server.

- `schema_errors`: the CRD's `openAPIV3Schema` (Kubernetes' OpenAPI dialect),
  converted to JSON Schema 2020-12 and checked with `jsonschema`. With
  `strict=True` unknown fields are errors, as with kubectl's default
  `--validate=strict` (server-side field validation); without it, a real server
  would silently prune them.
- `cel_failures`: the CRD's `x-kubernetes-validations` rules, evaluated with
  cel-python on every node they are attached to, after the server's defaulting.

A helper module of tests/api (imported by the test files next to it).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

from kascade.testing.schema_validation import to_jsonschema as standin_to_jsonschema

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
EXAMPLES = REPO / "examples"
CRD_PATH = CRDS / "kascade.dev_modelcascades.yaml"


@functools.cache
def crd() -> dict[str, Any]:
    """The CRD as shipped in crds/ (a test checks it matches the models)."""
    return yaml.safe_load(CRD_PATH.read_text())


def openapi_schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def to_jsonschema(node: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """The CRD's schema as JSON Schema, by the stand-in's conversion; strict: unknown fields refused."""
    return standin_to_jsonschema(node, refuse_unknown=strict)


@functools.cache
def _validator(strict: bool) -> jsonschema.Draft202012Validator:
    schema = to_jsonschema(openapi_schema(), strict=strict)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(manifest: dict[str, Any], *, strict: bool = True) -> list[str]:
    """What the OpenAPI schema refuses, one line per error: "spec.tiers.0.replicas: -1 is less than..."."""
    errors = sorted(_validator(strict).iter_errors(manifest), key=lambda error: list(map(str, error.path)))
    return [f"{'.'.join(map(str, error.path)) or '<root>'}: {error.message}" for error in errors]


def apply_defaults(schema: dict[str, Any], data: Any) -> Any:
    """Fill in schema defaults the way the API server does before validating: a copy."""
    data = copy.deepcopy(data)
    _default_in_place(schema, data)
    return data


def _default_in_place(schema: dict[str, Any], data: Any) -> None:
    if isinstance(data, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in data and "default" in sub:
                data[name] = copy.deepcopy(sub["default"])
            if name in data:
                _default_in_place(sub, data[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for value in data.values():
                _default_in_place(extra, value)
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        for item in data:
            _default_in_place(schema["items"], item)


@functools.cache
def _cel_program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_rules(schema: dict[str, Any] | None = None, path: str = "") -> list[tuple[str, dict[str, str]]]:
    """Every (schema path, rule) pair in the schema."""
    schema = openapi_schema() if schema is None else schema
    found = [(path, rule) for rule in schema.get("x-kubernetes-validations", [])]
    for name, sub in schema.get("properties", {}).items():
        found += cel_rules(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found += cel_rules(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        found += cel_rules(schema["additionalProperties"], f"{path}.*")
    return found


def cel_failures(manifest: dict[str, Any], *, defaults: bool = True) -> list[str]:
    """Messages of the CEL rules the manifest breaks, as "spec.tiers[1]: message"."""
    schema = openapi_schema()
    data = apply_defaults(schema, manifest) if defaults else manifest
    failures: list[str] = []
    _check_cel(schema, data, "", failures)
    return failures


def _check_cel(schema: dict[str, Any], data: Any, path: str, failures: list[str]) -> None:
    if data is None:
        return
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            result = _cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(data)})
        except celpy.CELEvalError as error:  # the server reports evaluation errors as failures too
            result = error
        if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            failures.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(data, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in data:
                _check_cel(sub, data[name], f"{path}.{name}".lstrip("."), failures)
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(data):
            _check_cel(schema["items"], item, f"{path}[{index}]", failures)


def refusals(manifest: dict[str, Any]) -> list[str]:
    """Everything a (strictly validating) API server would refuse the manifest for."""
    return schema_errors(manifest) + cel_failures(manifest)


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
