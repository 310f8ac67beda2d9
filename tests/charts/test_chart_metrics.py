"""The optional ServiceMonitor finds the routers, and the Grafana dashboard asks for series the routers export.

The router Services are built by the operator's own builders and the series come
from the router's own `RouterMetrics`, so a renamed label, port or metric
breaks these tests rather than a dashboard in production.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from chart_testkit import CHART, VALUE_SETS, by_kind, render, render_values
from prometheus_client import CollectorRegistry

from kascade.api.modelcascade import ModelCascade
from kascade.operator.builders import build_router_metrics_service, build_router_service
from kascade.operator.settings import OperatorSettings
from kascade.runtime.metrics import RouterMetrics

DASHBOARD = CHART / "dashboards" / "kascade.json"
PROMETHEUS_DURATION = re.compile(
    r"^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$"
)
# Labels Prometheus (with the Prometheus Operator) adds to every scraped series.
TARGET_LABELS = {"namespace", "service", "pod", "container", "endpoint", "job", "instance"}


def local_demo(namespace: str = "ml") -> ModelCascade:
    manifest = yaml.safe_load((CHART.parents[1] / "examples" / "local-demo.yaml").read_text())
    manifest["metadata"]["namespace"] = namespace
    return ModelCascade.model_validate(manifest)


def router_service(namespace: str = "ml") -> dict[str, Any]:
    """The Service that names the routers' metrics port: the one the ServiceMonitor scrapes through."""
    return build_router_metrics_service(local_demo(namespace), OperatorSettings())


def service_monitor(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (monitor,) = by_kind(objects, "ServiceMonitor")
    return monitor


# --- ServiceMonitor ---------------------------------------------------------------------


@pytest.mark.slow  # helm template
def test_no_service_monitor_or_dashboard_by_default():
    assert by_kind(render("defaults"), "ServiceMonitor") == []
    assert by_kind(render("defaults"), "ConfigMap") == []


@pytest.mark.slow  # helm template
def test_the_service_monitor_selects_the_router_services_the_operator_builds():
    monitor = service_monitor(render("metrics"))
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = router_service()
    assert monitor["spec"]["selector"] == {
        "matchLabels": {"app.kubernetes.io/component": "router", "app.kubernetes.io/part-of": "kascade"}
    }
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [port["name"] for port in service["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"


@pytest.mark.slow  # helm template
def test_the_service_monitor_scrapes_a_port_the_cascades_own_service_does_not_expose():
    monitor = service_monitor(render("metrics"))
    (endpoint,) = monitor["spec"]["endpoints"]
    endpoint_service = build_router_service(local_demo(), OperatorSettings())
    assert endpoint["port"] == "metrics"
    assert endpoint["port"] not in [port["name"] for port in endpoint_service["spec"]["ports"]]
    # Selected too, by the same labels, but with no port of that name it gives Prometheus no target.
    assert monitor["spec"]["selector"]["matchLabels"].items() <= endpoint_service["metadata"]["labels"].items()


@pytest.mark.slow  # helm template
def test_the_service_monitor_does_not_select_the_tier_services():
    selector = service_monitor(render("metrics"))["spec"]["selector"]["matchLabels"]
    tier_labels = {"app.kubernetes.io/component": "tier", "app.kubernetes.io/part-of": "kascade"}
    assert not selector.items() <= tier_labels.items()


@pytest.mark.slow  # helm template
def test_the_service_monitor_looks_in_the_watched_namespaces():
    assert service_monitor(render("metrics"))["spec"]["namespaceSelector"] == {"any": True}
    assert service_monitor(render("customised"))["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}


@pytest.mark.parametrize("value_set", ["metrics", "customised"])
@pytest.mark.slow  # helm template
def test_the_service_monitor_uses_only_fields_the_prometheus_operator_knows(value_set: str):
    """kubernetes-validate has no ServiceMonitor schema; the fields used here are the Prometheus Operator's v1 API."""
    monitor = service_monitor(render(value_set))
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"selector", "namespaceSelector", "endpoints"}
    assert set(monitor["spec"]["namespaceSelector"]) <= {"any", "matchNames"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
        assert PROMETHEUS_DURATION.match(endpoint["interval"]) and PROMETHEUS_DURATION.match(endpoint["scrapeTimeout"])


@pytest.mark.slow  # helm template
def test_service_monitor_labels_and_namespace_are_configurable():
    monitor = service_monitor(render("metrics"))
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["metadata"]["namespace"] == "kascade-system"
    moved = render_values({"metrics": {"serviceMonitor": {"enabled": True, "namespace": "monitoring"}}})
    assert service_monitor(moved)["metadata"]["namespace"] == "monitoring"


# --- the Grafana dashboard -----------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def exported_series() -> dict[str, dict[str, set[str]]]:
    """Every series name a router exports, with its labels and their values (for a two-tier cascade)."""
    registry = CollectorRegistry()
    RouterMetrics(registry, "demo", ["small", "large"])
    series: dict[str, dict[str, set[str]]] = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = series.setdefault(sample.name, {})
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    return series


def expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard."""
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"] for target in panel["targets"]]


@pytest.mark.slow  # helm template
def test_the_dashboard_configmap_is_labelled_for_the_grafana_sidecar():
    (configmap,) = by_kind(render("metrics"), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    assert json.loads(configmap["data"]["kascade.json"]) == dashboard()
    assert VALUE_SETS["metrics"]["dashboard"]["enabled"] is True


def test_the_dashboard_has_the_panels_the_issue_asks_for():
    titles = {panel["title"]: panel for panel in dashboard()["panels"]}
    for title in (
        "Requests by answering tier",
        "Escalation rate",
        "Saved cost over time",
        "Tier latency p50 / p99",
        "Confidence histogram",
    ):
        assert title in titles, f"no panel {title!r}"
    latency = " ".join(target["expr"] for target in titles["Tier latency p50 / p99"]["targets"])
    assert "histogram_quantile(0.5," in latency and "histogram_quantile(0.99," in latency
    assert titles["Confidence histogram"]["type"] == "heatmap"
    assert "kascade_confidence_bucket" in titles["Confidence histogram"]["targets"][0]["expr"]


def test_every_series_label_and_value_the_dashboard_asks_for_exists():
    series = exported_series()
    for title, expr in expressions():
        names = re.findall(r"\b(kascade_[a-z_]+)\b", expr)
        assert names, f"{title}: no kascade series in {expr}"
        for name in names:
            assert name in series, f"{title}: the router exports no series {name}"
        for name, matchers in re.findall(r"\b(kascade_[a-z_]+)\{([^}]*)\}", expr):
            for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
                assert label in series[name] or label in TARGET_LABELS, f"{title}: {name} has no label {label}"
                if op == "=" and label in series[name]:
                    assert value in series[name][label], f"{title}: {name}{{{label}}} is never {value!r}"
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            for label in (part.strip() for part in grouping.split(",")):
                assert any(label in series[n] for n in names) or label in TARGET_LABELS, f"{title}: by ({label})"


def test_the_dashboard_variables_and_layout_are_sound():
    board = dashboard()
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert {"datasource", "namespace", "cascade"} <= variables
    for title, expr in expressions():
        for used in re.findall(r"\$(\w+)", expr):
            assert used in variables or used.startswith("__"), f"{title}: undefined variable ${used}"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"panel {panel['title']!r} overlaps another"
        cells |= area
