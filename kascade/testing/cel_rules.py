"""CEL rules (`x-kubernetes-validations`) of a CRD schema, evaluated with cel-python as the server does.

The evaluation follows tests/api/crd_testkit.py (moved here so that the
stand-in needs no test code).
"""

from __future__ import annotations

import functools
from typing import Any

import celpy

from kascade.testing.errors import Cause
from kascade.testing.schema_validation import json_type_name
from kascade.testing.schemas import SchemaTree


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
            reason = {
                "FieldValueRequired": "FieldValueRequired",
                "FieldValueDuplicate": "FieldValueDuplicate",
                "FieldValueForbidden": "FieldValueForbidden",
            }.get(rule.get("reason", ""), "FieldValueInvalid")
            causes.append(Cause(reason, f'Invalid value: "{json_type_name(data)}": {message}', where.lstrip(".")))
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
