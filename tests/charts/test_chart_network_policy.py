"""The optional NetworkPolicy: clients reach the routers' API port, only the monitoring namespace their metrics port.

The ports are named as the operator's router Deployment names them, and the
pods are selected by the labels the operator gives them, so a renamed port or
label breaks these tests rather than a policy that silently lets nothing in.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from chart_testkit import CHART, VALUE_SETS, by_kind, render, render_values, template_error

from kascade.api.modelcascade import ModelCascade
from kascade.operator.builders import build_router_deployment
from kascade.operator.settings import OperatorSettings

pytestmark = pytest.mark.slow  # helm template


def router_pod() -> tuple[dict[str, str], set[str]]:
    """The labels and the container port names of a router pod as the operator builds it."""
    manifest = yaml.safe_load((CHART.parents[1] / "examples" / "local-demo.yaml").read_text())
    template = build_router_deployment(ModelCascade.model_validate(manifest), OperatorSettings())["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return template["metadata"]["labels"], {port["name"] for port in container["ports"]}


def policies(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {policy["metadata"]["namespace"]: policy for policy in by_kind(objects, "NetworkPolicy")}


def test_no_network_policy_by_default():
    for value_set in ("defaults", "namespaced", "metrics"):
        assert by_kind(render(value_set), "NetworkPolicy") == []


def test_one_policy_per_watched_namespace_selects_the_router_pods_the_operator_builds():
    rendered = policies(render("network-policy"))
    assert set(rendered) == {"team-a", "team-b"}
    labels, ports = router_pod()
    for policy in rendered.values():
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        named = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
        assert named == {"http", "metrics"} and named <= ports


def test_clients_reach_the_api_port_and_only_the_monitoring_namespace_the_metrics_port():
    (policy, _) = policies(render("network-policy")).values()
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert by_port["http"]["from"] == VALUE_SETS["network-policy"]["networkPolicy"]["apiClients"]
    assert by_port["metrics"]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}
    ]


def test_without_api_clients_every_source_reaches_the_api_port():
    rendered = render_values({"networkPolicy": {"enabled": True, "namespaces": ["ml"]}})
    (policy,) = by_kind(rendered, "NetworkPolicy")
    api, metrics = policy["spec"]["ingress"]
    assert "from" not in api and api["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert metrics["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert policy["metadata"]["namespace"] == "ml"


def test_cluster_wide_mode_must_name_the_namespaces():
    message = template_error({"networkPolicy": {"enabled": True}})
    assert "networkPolicy.namespaces" in message
