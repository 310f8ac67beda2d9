"""values.yaml documents every key; values.schema.json refuses what would silently do nothing.

A typo in a values file (`watchNamespaces`, `modelcache`) or a bad value
(`logLevel: warning`) makes `helm template` and `helm install` fail with a
message that names the key; these tests run the real helm on several.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from chart_testkit import CHART, template_error, values_schema, values_yaml


def test_values_yaml_starts_with_the_schema_line_for_editors():
    first = (CHART / "values.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=values.schema.json"


def test_the_default_values_meet_the_schema():
    jsonschema.Draft7Validator.check_schema(values_schema())
    jsonschema.Draft7Validator(values_schema()).validate(values_yaml())


def _objects(schema: dict[str, Any], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(schema, dict):
        if "properties" in schema:
            yield where, schema
        for key, value in schema.items():
            if isinstance(value, dict):
                yield from _objects(value, f"{where}/{key}")
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    yield from _objects(item, f"{where}/{key}/{index}")


def test_every_object_with_known_keys_refuses_unknown_ones():
    for where, schema in _objects(values_schema(), ""):
        if where.endswith("/envVar") or where.endswith("/valueFrom"):
            continue
        assert schema.get("additionalProperties") is False, f"{where or '/'}: set additionalProperties: false"


def _schema_keys(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of the keys the schema declares directly (not through $ref or free-form objects)."""
    keys = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        keys.add(path)
        if "properties" in sub:
            keys |= _schema_keys(sub, f"{path}.")
    return keys


def _value_keys(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        keys.add(path)
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and "properties" in sub:
            keys |= _value_keys(value, sub, f"{path}.")
    return keys


def test_values_yaml_and_the_schema_know_the_same_keys():
    declared = _schema_keys(values_schema()) - {"global"}
    present = _value_keys(values_yaml(), values_schema())
    assert present - declared == set(), "keys in values.yaml the schema does not declare"
    assert declared - present == set(), "keys the schema declares with no default in values.yaml"


def test_every_key_of_values_yaml_has_a_comment_above_it():
    """Each key the schema declares carries a comment on the line right above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    declared = _schema_keys(values_schema())
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    uncommented = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z_][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(k for _, k in stack), key])
        stack.append((indent, key))
        if path in declared and not lines[number - 1].lstrip().startswith("#"):
            uncommented.append(f"line {number + 1}: {path}")
    assert uncommented == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"watchNamespaces": ["team-a"]}, "additional properties 'watchNamespaces' not allowed"),
        ({"cascades": {"modelcache": {"size": "1Ti"}}}, "additional properties 'modelcache' not allowed"),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "additional properties 'enable' not allowed"),
        (
            {"operator": {"logLevel": "warning"}},
            "at '/operator/logLevel': value must be one of 'info', 'verbose', 'debug'",
        ),
        ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "at '/operator/image/pullPolicy'"),
        ({"watch": {"namespaces": ["Team_A"]}}, "at '/watch/namespaces/0': 'Team_A' does not match pattern"),
        ({"watch": {"namespaces": ["ml", "ml"]}}, "at '/watch/namespaces'"),
        (
            {"metrics": {"serviceMonitor": {"enabled": "yes"}}},
            "at '/metrics/serviceMonitor/enabled': got string, want boolean",
        ),
        ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "at '/metrics/serviceMonitor/interval'"),
        ({"operator": {"resources": {"limits": {"memory": "lots"}}}}, "at '/operator/resources/limits/memory'"),
        ({"operator": {"healthPort": 80}}, "at '/operator/healthPort'"),
        (
            {"cascades": {"gpuTolerations": [{"key": "gpu", "operator": "Exist"}]}},
            "at '/cascades/gpuTolerations/0/operator'",
        ),
        ({"cascades": {"vllmImage": {"tag": ""}}}, "at '/cascades/vllmImage/tag'"),
        ({"imageRegistry": "https://registry.example.com"}, "at '/imageRegistry'"),
        (
            {"cascades": {"router": {"statusReportIntervalSeconds": 0}}},
            "at '/cascades/router/statusReportIntervalSeconds'",
        ),
        ({"cascades": {"tierNodeSelector": {"pool": 3}}}, "at '/cascades/tierNodeSelector/pool'"),
        ({"cascades": {"autoscaling": {"autoscaler": "kubeai"}}}, "at '/cascades/autoscaling/autoscaler'"),
        ({"cascades": {"autoscaling": {"hpaCpuUtilization": 150}}}, "at '/cascades/autoscaling/hpaCpuUtilization'"),
        (
            {"cascades": {"autoscaling": {"prometheusAddress": "prometheus:9090"}}},
            "at '/cascades/autoscaling/prometheusAddress'",
        ),
        ({"dashboard": {"labels": {"grafana_dashboard": 1}}}, "at '/dashboard/labels/grafana_dashboard'"),
        ({"rbac": {"clusterReads": "auto"}}, "at '/rbac/clusterReads'"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name: name the existing ServiceAccount"),
    ],
)
@pytest.mark.slow  # helm template
def test_bad_values_fail_with_a_message_naming_the_key(values: dict[str, Any], message: str):
    assert message in template_error(values)
