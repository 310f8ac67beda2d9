"""Cascades on a real control plane, with the chart's RBAC enforced and Pod Security "restricted".

One cluster for the module, driven in order, as a platform engineer would meet it:

1. `helm install` of charts/kascade (CRDs from the chart) into a namespace that enforces the
   restricted profile; the operator Deployment's pod is admitted, scheduled and Ready;
2. the operator runs as a process here with a token of the chart's ServiceAccount (TokenRequest
   API): the chart's ClusterRole is what the API server enforces, no admin credentials;
3. every example in examples/ is applied in a namespace labelled
   `pod-security.kubernetes.io/enforce=restricted`; kwok nodes offer the GPU types the examples
   ask for; the ReplicaSet controller creates the pods (no FailedCreate), the scheduler binds
   them, kwok makes them Ready and the cascade turns Ready through its conditions;
4. scale from zero: with no node of the tier's GPU type the children exist, the pods are
   Pending and a condition names the wait; a node of that type brings Ready with no edit;
5. a full GPU pool (exactly the GPUs the tiers ask for): a change of the student tier's model
   (the promotion path) rolls out to completion;
6. a `kascade route` process authenticated as the router's ServiceAccount writes its counter
   slot; the operator folds it into the status;
7. deleting a cascade: the real garbage collector removes every child; deleting a namespace
   does not hang; the documented uninstall (docs/install.md) completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cluster_testkit import (
    GPU_TAINT,
    GROUP,
    REPO,
    SYSTEM,
    Installed,
    restricted_namespace,
    secret,
    shared_claim,
    wait_for,
    yaml_docs,
)

from kascade.runtime.config import RouterConfig
from kascade.runtime.serving import BackgroundServer, free_port
from kascade.testing.fixed_upstream import FixedBehaviour, create_fixed_upstream_app

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.timeout(600)


# --- 1. the chart ----------------------------------------------------------------------------------


def test_the_chart_installs_into_a_restricted_namespace(installed: Installed) -> None:
    """helm install --wait returned: the operator's pod was admitted under "restricted", scheduled and made Ready."""
    deployment = installed.plane.get("deployments", "kascade-operator", namespace=SYSTEM, group="apps/v1")
    assert deployment is not None and deployment["status"].get("readyReplicas") == 1
    for crd in ("modelcascades.kascade.dev", "distillations.kascade.dev"):
        assert installed.plane.get("customresourcedefinitions", crd, group="apiextensions.k8s.io/v1") is not None


# --- 3. every example, restricted namespaces ----------------------------------------------------------------

EXAMPLE_NEEDS: dict[str, Callable[[str], list[dict[str, Any]]]] = {
    "autoscaled-chat.yaml": lambda ns: [],
    "chat-vllm-gpu.yaml": lambda ns: [
        secret("hf-token", ns, token="hf_test"),
        secret("chat-client-keys", ns, keys="test-key\n"),
        *shared_claim("kascade-logs", ns),
        *shared_claim("kascade-students", ns),
    ],
    "classify.yaml": lambda ns: shared_claim("classifiers", ns),
    "external-last-tier.yaml": lambda ns: [secret("openai", ns, **{"api-key": "sk-test"})],
    "local-demo.yaml": lambda ns: [],
}


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "ModelCascade":
                found.append((path.name, document))
    return found


def test_every_example_is_covered() -> None:
    assert {name for name, _ in example_documents()} == set(EXAMPLE_NEEDS)


@pytest.mark.parametrize("example", [name for name, _ in example_documents()])
def test_every_example_comes_up_under_pod_security_restricted(installed: Installed, example: str) -> None:
    """Applied as the docs say into a restricted namespace: pods are created (no FailedCreate), bound, Ready."""
    manifest = dict(next(doc for name, doc in example_documents() if name == example))
    namespace = f"ex-{Path(example).stem}"
    manifest["metadata"] = {**manifest["metadata"], "namespace": namespace}
    name = manifest["metadata"]["name"]
    plane = installed.plane
    plane.kubectl(
        "apply", "-f", "-", input=yaml_docs(restricted_namespace(namespace), *EXAMPLE_NEEDS[example](namespace))
    )
    plane.kubectl("apply", "-f", "-", input=yaml_docs(manifest))
    installed.wait_ready(name, namespace, timeout=180)

    events = plane.list("events", namespace=namespace)
    refused = [e["message"] for e in events if e.get("reason") in ("FailedCreate", "FailedScheduling")]
    assert not refused, refused
    pods = plane.list("pods", namespace=namespace)
    assert pods, "no pods"
    for pod in pods:
        assert pod["status"]["phase"] == "Running", (pod["metadata"]["name"], pod["status"])
        assert pod["spec"].get("nodeName"), pod["metadata"]["name"]
    status = installed.cascade(name, namespace)["status"]
    assert status["observedGeneration"] == installed.cascade(name, namespace)["metadata"]["generation"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Degraded"] == "False"


# --- 4. scale from zero -----------------------------------------------------------------------------------


def two_tier_cascade(
    name: str,
    namespace: str,
    *,
    gpu_type: str,
    small_uri: str = "hf://Qwen/Qwen2.5-0.5B-Instruct",
    large_uri: str = "hf://Qwen/Qwen2.5-7B-Instruct",
) -> dict[str, Any]:
    return {
        "apiVersion": GROUP,
        "kind": "ModelCascade",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "task": "chat",
            "tiers": [
                {
                    "name": "small",
                    "model": {"uri": small_uri},
                    "resources": {"gpus": 1, "gpuType": gpu_type},
                    "accept": {"method": "geometricMean", "threshold": 0.8},
                    "price": {"currency": "USD", "inputPerMillion": 0.1, "outputPerMillion": 0.2},
                },
                {
                    "name": "large",
                    "model": {"uri": large_uri},
                    "resources": {"gpus": 1, "gpuType": gpu_type},
                    "price": {"currency": "USD", "inputPerMillion": 1.0, "outputPerMillion": 2.0},
                },
            ],
        },
    }


def test_a_gpu_type_no_node_offers_yet_waits_then_comes_up_when_a_node_arrives(installed: Installed) -> None:
    """Scale from zero: the children exist, the pods are Pending, a condition names the wait; a node ends it."""
    plane, namespace, gpu_type = installed.plane, "scale-from-zero", "NVIDIA-A100-SXM4-80GB"
    plane.kubectl(
        "apply",
        "-f",
        "-",
        input=yaml_docs(restricted_namespace(namespace), two_tier_cascade("chat", namespace, gpu_type=gpu_type)),
    )
    wait_for(
        lambda: (
            len([p for p in plane.list("pods", namespace=namespace) if p["metadata"]["labels"].get("kascade.dev/tier")])
            == 2
        ),
        what="the tiers' pods",
        context=installed.context(namespace),
    )
    tier_pods = [p for p in plane.list("pods", namespace=namespace) if p["metadata"]["labels"].get("kascade.dev/tier")]
    assert {p["status"]["phase"] for p in tier_pods} == {"Pending"}
    unschedulable = wait_for(
        lambda: [
            p
            for p in plane.list("pods", namespace=namespace)
            if any(
                c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                for c in p["status"].get("conditions", [])
            )
        ],
        what="the scheduler to mark them Unschedulable",
    )
    assert len(unschedulable) == 2
    waiting = wait_for(
        lambda: next(
            (
                c
                for c in installed.cascade("chat", namespace)["status"].get("conditions", [])
                if c["status"] == "False" and gpu_type in c.get("message", "")
            ),
            None,
        ),
        what="a condition naming the GPU type",
        context=installed.context(namespace),
    )
    assert waiting["reason"] == "WaitingForGpuNodes", waiting
    assert installed.condition("chat", namespace, "Degraded").get("status") == "False"

    plane.add_node(
        "gpu-a100-scaled-up",
        labels={"nvidia.com/gpu.product": gpu_type},
        capacity={"nvidia.com/gpu": "2"},
        taints=[GPU_TAINT],
    )
    installed.wait_ready("chat", namespace)


def test_pods_the_cluster_refuses_show_in_the_cascade_with_the_clusters_reason(installed: Installed) -> None:
    """A ResourceQuota that admits no pods: the ReplicaSets' FailedCreate reaches Degraded, message and all."""
    plane, namespace = installed.plane, "no-pods-allowed"
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-pods", "namespace": namespace},
        "spec": {"hard": {"pods": "0"}},
    }
    plane.kubectl("apply", "-f", "-", input=yaml_docs(restricted_namespace(namespace), quota))
    plane.kubectl("apply", "-f", "-", input=yaml_docs(two_tier_cascade("chat", namespace, gpu_type="NVIDIA-L4")))
    degraded = wait_for(
        lambda: (c := installed.condition("chat", namespace, "Degraded")).get("reason") == "PodsRefused" and c,
        what="Degraded PodsRefused",
        context=installed.context(namespace),
    )
    assert degraded["status"] == "True" and "exceeded quota" in degraded["message"], degraded
    plane.kubectl("delete", "resourcequota", "no-pods", "-n", namespace)
    installed.wait_ready("chat", namespace, timeout=120)  # the ReplicaSets retry; nothing to edit
    assert installed.condition("chat", namespace, "Degraded")["status"] == "False"
    plane.kubectl("delete", "namespace", namespace, "--wait=false")


# --- 5. a full GPU pool ---------------------------------------------------------------------------------------


def test_a_new_student_rolls_out_on_a_full_gpu_pool(installed: Installed) -> None:
    """Exactly the GPUs the tiers ask for: changing the small tier's model still rolls out to completion."""
    plane, namespace, gpu_type = installed.plane, "full-pool", "NVIDIA-A10G"
    plane.add_node(
        "gpu-a10g-only",
        labels={"nvidia.com/gpu.product": gpu_type},
        capacity={"nvidia.com/gpu": "2"},
        taints=[GPU_TAINT],
    )
    cascade = two_tier_cascade("chat", namespace, gpu_type=gpu_type)
    plane.kubectl("apply", "-f", "-", input=yaml_docs(restricted_namespace(namespace), cascade))
    installed.wait_ready("chat", namespace)

    student = "hf://Qwen/Qwen2.5-0.5B-Instruct-distilled"
    plane.kubectl(
        "apply", "-f", "-", input=yaml_docs(two_tier_cascade("chat", namespace, gpu_type=gpu_type, small_uri=student))
    )

    def rolled_out() -> bool:
        deployment = plane.get("deployments", "chat-small", namespace=namespace, group="apps/v1") or {}
        status = deployment.get("status", {})
        pods = [
            p
            for p in plane.list("pods", namespace=namespace, label_selector="kascade.dev/tier=small")
            if not p["metadata"].get("deletionTimestamp")
        ]
        return (
            status.get("observedGeneration") == deployment["metadata"]["generation"]
            and status.get("updatedReplicas") == status.get("replicas") == status.get("readyReplicas") == 1
            and len(pods) == 1
            and student.removeprefix("hf://") in json.dumps(pods[0]["spec"])
        )

    wait_for(rolled_out, timeout=120, what="the new student's rollout", context=installed.context(namespace))
    installed.wait_ready("chat", namespace)


# --- 6. a router reports with its own ServiceAccount ------------------------------------------------------------


def test_a_router_writes_its_counters_as_its_service_account_and_the_operator_folds_them(installed: Installed) -> None:
    plane, namespace = installed.plane, "ex-chat-vllm-gpu"
    configmap = plane.get("configmaps", "chat-router", namespace=namespace)
    assert configmap is not None
    config = RouterConfig.model_validate(yaml.safe_load(configmap["data"]["router.yaml"]))
    assert config.status_report is not None
    router_pod = next(
        p["metadata"]["name"]
        for p in plane.list("pods", namespace=namespace, label_selector="app.kubernetes.io/component=router")
    )
    router_deployment = plane.get("deployments", "chat-router", namespace=namespace, group="apps/v1")
    assert router_deployment is not None
    account = router_deployment["spec"]["template"]["spec"]["serviceAccountName"]
    token_file = installed.tmp / "router-token"
    token_file.write_text(plane.token_for(account, namespace))
    keys = installed.tmp / "client-keys"
    keys.write_text("test-key\n")
    with contextlib.ExitStack() as stack:
        small = stack.enter_context(
            BackgroundServer(create_fixed_upstream_app(FixedBehaviour(model="small", token_prob=0.95)))
        )
        large = stack.enter_context(BackgroundServer(create_fixed_upstream_app(FixedBehaviour(model="large"))))
        urls = {"small": small.url + "/v1", "large": large.url + "/v1"}
        report = config.status_report.model_copy(
            update={
                "api_server": plane.url,
                "token_file": str(token_file),
                "ca_file": str(plane.ca_file),
                "interval_seconds": 0.5,
            }
        )
        local = config.model_copy(
            update={
                "tiers": [t.model_copy(update={"url": urls[t.name]}) for t in config.tiers],
                "api_keys_file": str(keys),
                "status_report": report,
                "escalation_log": None,
            }
        )
        path = installed.tmp / "router.yaml"
        path.write_text(yaml.safe_dump(local.model_dump(mode="json")))
        port = free_port()
        log = installed.tmp / "router.log"
        with log.open("wb") as out:
            router = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kascade",
                    "route",
                    "--config",
                    str(path),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, config.status_report.pod_env: router_pod},
            )
        try:
            wait_for(lambda: router.poll() is None and _healthy(port), what="the router", context=log.read_text)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="test-key", max_retries=0)
            for _ in range(5):
                client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello"}])
            wait_for(
                lambda: (installed.cascade("chat", namespace)["status"].get("traffic") or {}).get("requests") == 5,
                what="5 requests folded into the status",
                context=lambda: log.read_text()[-3000:] + installed.context(namespace)(),
            )
        finally:
            router.send_signal(signal.SIGTERM)
            router.wait(timeout=30)
    slots = installed.cascade("chat", namespace)["status"]["replicaCounters"]
    assert [slot["pod"] for slot in slots.values()] == [router_pod]
    assert "Forbidden" not in log.read_text()


def _healthy(port: int) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    return False


# --- 7. deletion ----------------------------------------------------------------------------------------------


def test_the_garbage_collector_removes_every_child_and_namespaces_delete(installed: Installed) -> None:
    plane, namespace = installed.plane, "full-pool"
    selector = "kascade.dev/cascade=chat"
    kinds = [
        ("deployments", "apps/v1"),
        ("services", ""),
        ("configmaps", ""),
        ("serviceaccounts", ""),
        ("roles", "rbac.authorization.k8s.io/v1"),
        ("rolebindings", "rbac.authorization.k8s.io/v1"),
    ]
    assert plane.list("deployments", namespace=namespace, group="apps/v1", label_selector=selector)
    plane.kubectl("delete", "modelcascade", "chat", "-n", namespace, "--timeout=60s")

    def children() -> list[str]:
        return [
            f"{resource}/{o['metadata']['name']}"
            for resource, group in kinds
            for o in plane.list(resource, namespace=namespace, group=group, label_selector=selector)
        ]

    wait_for(lambda: not children(), timeout=60, what="the garbage collector", context=lambda: str(children()))
    wait_for(lambda: not plane.list("pods", namespace=namespace), timeout=60, what="the pods to go")
    for namespace in ("full-pool", "scale-from-zero", "ex-classify"):
        plane.kubectl("delete", "namespace", namespace, "--timeout=90s")
