"""A real Kopf operator against the stand-in: it lists and watches the CRD, patches status, posts events, adopts children."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import kopf
import kubernetes
import pytest
from kopf.testing import KopfRunner

from kascade.testing import StandinApiServer

pytestmark = pytest.mark.slow  # the API-server stand-in on loopback

CRDS = Path(__file__).resolve().parents[2] / "crds"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandinApiServer]:
    with StandinApiServer(crd_paths=[CRDS]) as running:
        # The kubernetes client reads $KUBECONFIG when it is imported, so both are pointed at the stand-in.
        monkeypatch.setenv("KUBECONFIG", str(running.kubeconfig_path))
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(running.kubeconfig_path))
        yield running


@pytest.fixture
def own_registry() -> Iterator[None]:
    """`kopf run` makes the registry it is given the process's default; put Kopf's own back afterwards."""
    default = kopf.get_default_registry()
    yield
    kopf.set_default_registry(default)


def throwaway_operator(kubeconfig: Path) -> kopf.OperatorRegistry:
    """An operator in a few lines: on create, adopt and create a ConfigMap, post an event, set status.endpoint."""
    registry = kopf.OperatorRegistry()
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))

    @kopf.on.login(registry=registry)  # what Kopf's default registry does: the kubeconfig, via the kubernetes client
    def login(**kwargs: object) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.create("kascade.dev", "v1alpha1", "modelcascades", registry=registry)
    def created(body: kopf.Body, patch: kopf.Patch, name: str, namespace: str, **_: object) -> None:
        child = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{name}-router"},
            "data": {"tiers": "2"},
        }
        kopf.adopt(child, owner=body)  # owner reference with the owner's server-set uid
        kubernetes.client.CoreV1Api(client).create_namespaced_config_map(namespace, child)
        kopf.info(body, reason="Reconciled", message="router config created")
        patch.status["endpoint"] = f"http://{name}-router.{namespace}:8000/v1"

    return registry


def cascade(name: str) -> dict:
    return {
        "apiVersion": "kascade.dev/v1alpha1",
        "kind": "ModelCascade",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "tiers": [
                {"name": "small", "model": {"uri": "hf://org/small"}, "accept": {"threshold": 0.5}},
                {"name": "large", "model": {"uri": "hf://org/large"}},
            ]
        },
    }


def test_a_kopf_operator_reconciles_against_the_stand_in(
    server: StandinApiServer, own_registry: None, caplog: pytest.LogCaptureFixture
):
    """A real Kopf operator (standalone, one namespace) sees a new ModelCascade, writes /status, posts an event and adopts a child."""
    caplog.set_level(logging.INFO)
    registry = throwaway_operator(server.kubeconfig_path)
    with KopfRunner(["run", "--standalone", "--namespace", "default"], registry=registry, timeout=60) as runner:
        server.create(cascade("kopf-demo"))
        stored = server.wait_for(
            lambda: (obj := server.get("mcas", "kopf-demo")) and obj.get("status", {}).get("endpoint") and obj,
            timeout=20,
        )
        events = server.wait_for(
            lambda: [e for e in server.objects("events", "default") if e["reason"] == "Reconciled"]
        )
    assert runner.exception is None, runner.exception
    assert runner.exit_code == 0

    assert stored["status"]["endpoint"] == "http://kopf-demo-router.default:8000/v1"
    assert events[0]["involvedObject"]["uid"] == stored["metadata"]["uid"]
    child = server.get("configmaps", "kopf-demo-router")
    assert child["metadata"]["ownerReferences"][0]["uid"] == stored["metadata"]["uid"]
    # Kopf used the watch from its list's resourceVersion and wrote status through the subresource.
    requests = server.requests
    assert any(r.verb == "watch" and r.resource == "modelcascades" and r.query.get("resourceVersion") for r in requests)
    assert any(r.verb == "patch" and r.subresource == "status" and r.user_agent.startswith("kopf") for r in requests)

    server.delete("mcas", "kopf-demo")  # the adopted child goes with its owner
    server.wait_for(lambda: server.get("configmaps", "kopf-demo-router") is None)
