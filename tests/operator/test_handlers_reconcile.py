"""`reconcile` itself against the API-server stand-in (no kopf loop): what it writes, and when it writes nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow  # the API-server stand-in on loopback

kopf = pytest.importorskip("kopf")
pytest.importorskip("kmock")

from kascade.api.times import parse_time
from kascade.operator.kube_api import KubeApi
from kascade.operator.kube_credentials import Credentials
from kascade.operator.observe import GpuProducts
from kascade.operator.reconcile import Operator, reconcile
from kascade.operator.settings import OperatorSettings
from kascade.testing import StandinApiServer

REPO = Path(__file__).resolve().parents[2]
LOGGER = logging.getLogger("test-reconcile")
CHILDREN = ("serviceaccounts", "roles", "rolebindings", "configmaps", "services", "deployments")


@pytest.fixture(scope="module")
def server() -> Iterator[StandinApiServer]:
    with StandinApiServer(crd_paths=[REPO / "crds"], controller_delay=0.01) as running:
        running.add_node("gpu-l4", labels={"nvidia.com/gpu.product": "NVIDIA-L4"})
        running.add_node("gpu-h100", labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
        for name, key in (("hf-token", "token"), ("chat-client-keys", "keys")):
            running.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {key: "x"}})
        yield running


def create_cascade(server: StandinApiServer, name: str, **spec: Any) -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "chat-vllm-gpu.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": "default"}
    body["spec"].update(spec)
    return server.create(body)


def reconcile_once(credentials: Credentials, body: dict[str, Any], now: str | None = None) -> None:
    """One reconcile by a fresh operator (nothing kept from the last one but what the cluster holds)."""

    async def run() -> None:
        async with KubeApi(credentials) as api:
            operator = Operator(api=api, settings=OperatorSettings(), gpu_products=GpuProducts())
            if now is not None:
                operator.now = lambda: parse_time(now)
            await reconcile(operator, body, LOGGER)

    asyncio.run(run())


def children(server: StandinApiServer, name: str) -> list[str]:
    return sorted(
        f"{resource}/{obj['metadata']['name']}"
        for resource in CHILDREN
        for obj in server.objects(resource, "default", label_selector=f"kascade.dev/cascade={name}")
    )


def conditions(server: StandinApiServer, name: str) -> dict[str, tuple[str, str]]:
    status = server.get("modelcascades", name, "default").get("status") or {}
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}


def test_the_first_reconcile_creates_and_the_next_ones_write_nothing(
    server: StandinApiServer, credentials: Credentials
):
    body = create_cascade(server, "steady")
    reconcile_once(credentials, body)
    assert len(children(server, "steady")) == 14  # the example distils: its runs' identity too
    server.wait_for(
        lambda: all(
            (server.get("deployments", f"steady-{c}", "default").get("status") or {}).get("readyReplicas")
            for c in ("small", "large", "router")
        )
    )
    body = server.get("modelcascades", "steady", "default")
    reconcile_once(credentials, body)  # readiness lands in the status
    assert conditions(server, "steady")["Ready"] == ("True", "Ready")

    mark = server.mark()
    reconcile_once(credentials, server.get("modelcascades", "steady", "default"))
    reconcile_once(credentials, server.get("modelcascades", "steady", "default"))
    assert server.writes(since=mark) == []
    reads = [r for r in server.requests[mark:] if r.user_agent.startswith("kascade-operator/")]
    discovery = [r for r in reads if r.resource is None]  # is KEDA served? an external metrics API?
    reads = [r for r in reads if r.resource is not None]
    assert sorted(r.path for r in discovery) == [
        *2 * ["/apis/external.metrics.k8s.io/v1beta1"],
        *2 * ["/apis/keda.sh/v1alpha1"],
    ]
    assert {r.verb for r in reads} == {"list", "get"}
    # Per reconcile: 8 child lists, 2 Secret gets, 1 node list (a running operator lists nodes at most every 10 s),
    # 1 list of the distillation runs (the example distils), 2 claim gets (the log's and the students' access modes).
    assert len(reads) == 2 * (8 + 2 + 1 + 1 + 2)


def test_a_gpu_type_no_node_offers_yet_is_applied_and_ready_once_such_a_node_joins(
    server: StandinApiServer, credentials: Credentials
):
    """Scale from zero: no node has the tier's GPU type, yet the children are applied (the pods' Pending is what
    makes an autoscaler add a node), TiersReady names the wait, and the node's arrival brings Ready, no edit."""
    body = yaml.safe_load((REPO / "examples" / "chat-vllm-gpu.yaml").read_text())
    body["spec"]["tiers"][1]["resources"]["gpuType"] = "NVIDIA-B200"
    body["metadata"] = {"name": "scaling", "namespace": "default"}
    server.hold_unready("default", "scaling-large")  # no node to run on: its pods stay Pending
    created = server.create(body)
    reconcile_once(credentials, created)
    assert len(children(server, "scaling")) == 14
    large = server.get("deployments", "scaling-large", "default")
    assert large["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-B200"}
    server.wait_for(
        lambda: (server.get("deployments", "scaling-router", "default").get("status") or {}).get("readyReplicas")
    )
    reconcile_once(credentials, server.get("modelcascades", "scaling", "default"))
    found = conditions(server, "scaling")
    assert found["TiersReady"] == ("False", "WaitingForGpuNodes")
    assert found["Ready"] == ("False", "WaitingForGpuNodes")
    assert found["Degraded"] == ("False", "AsExpected")
    tiers_ready = next(
        c
        for c in server.get("modelcascades", "scaling", "default")["status"]["conditions"]
        if c["type"] == "TiersReady"
    )
    assert tiers_ready["message"].startswith(
        'tier "large" has 0/1 ready replicas: its pods wait for a node with nvidia.com/gpu.product=NVIDIA-B200'
    )

    server.add_node("gpu-b200", labels={"nvidia.com/gpu.product": "NVIDIA-B200"})
    server.release("default", "scaling-large")
    server.wait_for(
        lambda: (server.get("deployments", "scaling-large", "default").get("status") or {}).get("readyReplicas")
    )
    reconcile_once(credentials, server.get("modelcascades", "scaling", "default"))
    assert conditions(server, "scaling")["Ready"] == ("True", "Ready")
    assert (
        server.get("modelcascades", "scaling", "default")["metadata"]["generation"] == created["metadata"]["generation"]
    )


def test_a_read_write_once_claim_shared_across_nodes_warns_and_applies(
    server: StandinApiServer, credentials: Credentials
):
    body = yaml.safe_load((REPO / "examples" / "chat-vllm-gpu.yaml").read_text())
    namespace = "claims"
    server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    for name, key in (("hf-token", "token"), ("chat-client-keys", "keys")):
        server.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
                "stringData": {key: "x"},
            }
        )
    for claim, mode in (("kascade-logs", "ReadWriteOnce"), ("kascade-students", "ReadWriteMany")):
        server.create(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": namespace},
                "spec": {"accessModes": [mode], "resources": {"requests": {"storage": "10Gi"}}},
            }
        )
    created = server.create({**body, "metadata": {"name": "shared", "namespace": namespace}})
    reconcile_once(credentials, created)
    assert server.get("deployments", "shared-router", namespace) is not None  # a warning stops nothing
    status = server.get("modelcascades", "shared", namespace)["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ClaimNotShared")
    assert degraded["message"].startswith(
        'PersistentVolumeClaim "kascade-logs" (the escalation log, written by 2 router '
        "replicas and read by the distillation runs) is ReadWriteOnce"
    )
    assert "kascade-students" not in degraded["message"]


def test_a_name_taken_by_someone_else_is_a_conflict_and_nothing_is_applied(
    server: StandinApiServer, credentials: Credentials
):
    foreign = server.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "taken-router", "labels": {"owner": "someone-else"}},
            "data": {"a": "b"},
        }
    )
    body = create_cascade(server, "taken")
    reconcile_once(credentials, body)
    assert children(server, "taken") == []
    assert conditions(server, "taken")["Degraded"] == ("True", "NameConflict")
    status = server.get("modelcascades", "taken", "default")["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (
        'ConfigMap "taken-router" already exists in namespace "default" and is not managed by this cascade'
        in (degraded["message"])
    )
    assert server.get("configmaps", "taken-router", "default") == foreign


def test_a_spec_that_does_not_parse_sets_invalid_spec_and_fails_permanently(
    server: StandinApiServer, credentials: Credentials
):
    body = create_cascade(server, "unparsed")
    body["spec"]["tiers"][1]["accept"] = {"threshold": 0.5}  # the CRD's CEL rule would refuse it; pydantic does too
    with pytest.raises(kopf.PermanentError, match="the last tier .* always answers"):
        reconcile_once(credentials, body)
    assert conditions(server, "unparsed") == {"Ready": ("False", "InvalidSpec"), "Degraded": ("True", "InvalidSpec")}
    assert children(server, "unparsed") == []
    mark = server.mark()
    with pytest.raises(kopf.PermanentError):
        reconcile_once(
            credentials,
            {
                **body,
                "status": server.get("modelcascades", "unparsed", "default")["status"],
                "metadata": server.get("modelcascades", "unparsed", "default")["metadata"],
            },
        )
    assert server.writes(since=mark) == []


def test_a_stale_body_never_overwrites_a_newer_status(server: StandinApiServer, credentials: Credentials):
    """The status write carries the body's resourceVersion: a router's newer slot makes it re-read, not clobber."""
    body = create_cascade(server, "stale")
    reconcile_once(credentials, body)
    slot = {
        "processId": "p1",
        "pod": "stale-router-x",
        "startedAt": "2026-01-01T00:00:00Z",
        "currency": "USD",
        "requests": 7,
        "failed": 0,
        "escalations": 1,
        "answeredBy": {"small": 6, "large": 1},
        "cost": {"actual": 1.0, "baseline": 2.0},
    }
    server.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "stale-router-x",
                "labels": {
                    "app.kubernetes.io/name": "kascade",
                    "app.kubernetes.io/instance": "stale",
                    "app.kubernetes.io/component": "router",
                    "kascade.dev/cascade": "stale",
                },
            },
            "spec": {"containers": [{"name": "router", "image": "r:1"}]},
        }
    )
    server.patch("modelcascades", "stale", {"status": {"replicaCounters": {"p1": slot}}}, subresource="status")
    reconcile_once(credentials, body)  # `body` predates both the first status write and the slot
    status = server.get("modelcascades", "stale", "default")["status"]
    assert status["replicaCounters"]["p1"]["requests"] == 7
    assert status["traffic"]["requests"] == 7 and status["traffic"]["escalations"] == 1


def test_gpu_hours_grow_with_the_ready_gpus_and_carry_over_from_operator_to_operator(
    server: StandinApiServer, credentials: Credentials
):
    """2 L4s at 0.80 and 4 H100s at 3.00 an hour, once ready; each reconcile here is a fresh operator."""
    reconcile_once(credentials, create_cascade(server, "billed"), now="2026-01-01T00:00:00Z")  # the clock starts
    server.wait_for(
        lambda: all(
            (server.get("deployments", f"billed-{c}", "default").get("status") or {}).get("readyReplicas")
            for c in ("small", "large", "router")
        )
    )
    reconcile_once(credentials, server.get("modelcascades", "billed", "default"), now="2026-01-01T00:01:00Z")
    status = server.get("modelcascades", "billed", "default")["status"]
    assert [t["readyGpus"] for t in status["tiers"]] == [2, 4]
    assert status["cost"]["gpuHours"] == 0  # nothing was ready during the first minute

    mark = server.mark()
    reconcile_once(credentials, server.get("modelcascades", "billed", "default"), now="2026-01-01T00:03:00Z")
    assert server.writes(since=mark) == []  # not due yet (every 5 minutes)
    reconcile_once(credentials, server.get("modelcascades", "billed", "default"), now="2026-01-01T01:01:00Z")
    cost = server.get("modelcascades", "billed", "default")["status"]["cost"]
    assert cost["gpuHours"] == pytest.approx(6.0)
    assert cost["reservationCost"] == pytest.approx(2 * 0.8 + 4 * 3.0)
    assert [(w.verb, w.subresource) for w in server.writes(since=mark)] == [("patch", "status")]

    # Three hours without an operator: the pods kept their GPUs, and the next operator bills them.
    reconcile_once(credentials, server.get("modelcascades", "billed", "default"), now="2026-01-01T04:01:00Z")
    status = server.get("modelcascades", "billed", "default")["status"]
    assert status["cost"]["gpuHours"] == pytest.approx(24.0)
    assert status["cost"]["reservationCost"] == pytest.approx(4 * 13.6)
    assert [t["gpuHours"] for t in status["tiers"]] == pytest.approx([8.0, 16.0])
    assert (status["cost"]["gpuHoursSince"], status["cost"]["gpuHoursUntil"]) == (
        "2026-01-01T00:00:00Z",
        "2026-01-01T04:01:00Z",
    )
    assert status["summary"]["reserved"] == "USD 54.40 (24.0 GPU-h)"


def test_a_distilling_cascade_without_the_distillation_crd_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch):
    with StandinApiServer(crd_paths=[REPO / "crds" / "kascade.dev_modelcascades.yaml"], controller_delay=0.01) as alone:
        alone.add_node("gpu-l4", labels={"nvidia.com/gpu.product": "NVIDIA-L4"})
        alone.add_node("gpu-h100", labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
        for name, key in (("hf-token", "token"), ("chat-client-keys", "keys")):
            alone.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {key: "x"}})
        monkeypatch.setenv("KUBECONFIG", str(alone.kubeconfig_path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        reconcile_once(Credentials.from_environment(), create_cascade(alone, "no-crd"))
        status = alone.get("modelcascades", "no-crd", "default")["status"]
        assert len(children(alone, "no-crd")) == 14, "the cascade itself is served"
    assert status["distillation"]["waiting"].startswith("the Distillation CRD is not installed: kubectl apply -f crds/")
