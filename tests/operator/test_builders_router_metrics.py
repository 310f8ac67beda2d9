"""The routers' metrics port: declared by the Deployment, named by a headless Service of its own, kept off the
cascade's Service that clients reach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kascade.api.modelcascade import ModelCascade
from kascade.operator.build_router import (
    build_router_config,
    build_router_deployment,
    build_router_metrics_service,
    build_router_service,
)
from kascade.operator.builders import build_children
from kascade.operator.labels import selector_labels
from kascade.operator.settings import OperatorSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = OperatorSettings()


def example(name: str = "chat-vllm-gpu.yaml") -> ModelCascade:
    return ModelCascade.model_validate(yaml.safe_load((EXAMPLES / name).read_text()))


def container_ports(cascade: ModelCascade) -> dict[str, int]:
    (container,) = build_router_deployment(cascade, SETTINGS)["spec"]["template"]["spec"]["containers"]
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def test_the_deployment_declares_the_api_port_and_the_metrics_port_the_config_names() -> None:
    cascade = example()
    assert container_ports(cascade) == {"http": SETTINGS.router_port, "metrics": 9090}
    assert build_router_config(cascade, SETTINGS).metrics_port == container_ports(cascade)["metrics"]
    (container,) = build_router_deployment(cascade, SETTINGS)["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["port"] == "http"  # the probes stay on the API port


def test_the_cascades_service_does_not_expose_the_metrics_port() -> None:
    service = build_router_service(example(), SETTINGS)
    assert [port["name"] for port in service["spec"]["ports"]] == ["http"]
    assert 9090 not in [port["port"] for port in service["spec"]["ports"]]


def test_the_metrics_service_is_headless_and_names_the_metrics_port_of_the_router_pods() -> None:
    cascade = example()
    service = build_router_metrics_service(cascade, SETTINGS)
    kubernetes_validate.validate(service, "1.30.0", strict=True)
    assert service["metadata"]["name"] == "chat-router-metrics"
    assert service["metadata"]["namespace"] == "llm"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == selector_labels("chat", "router")
    pod_labels = build_router_deployment(cascade, SETTINGS)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics" and port["port"] == 9090
    assert service["metadata"]["labels"] == build_router_service(cascade, SETTINGS)["metadata"]["labels"]


def test_every_cascade_gets_the_metrics_service_after_its_endpoint() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        cascade = example(path.name)
        names = [(child["kind"], child["metadata"]["name"]) for child in build_children(cascade, SETTINGS)]
        router = f"{cascade.metadata.name}-router"
        assert names.index(("Service", f"{router}-metrics")) == names.index(("Service", router)) + 1


def _renamed(cascade: ModelCascade, tier: int, name: str) -> ModelCascade:
    body: dict[str, Any] = cascade.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["spec"]["tiers"][tier]["name"] = name
    return ModelCascade.model_validate(body)


def test_a_tier_named_router_metrics_is_refused() -> None:
    with pytest.raises(ValueError, match="router-metrics"):
        build_children(_renamed(example(), 1, "router-metrics"), SETTINGS)
