"""Autoscaled tiers on a real control plane: what the operator renders is accepted, and it leaves the replicas alone.

One cascade of two CPU tiers, both with `autoscaling`, reconciled by the real operator with the chart's RBAC:

1. no KEDA CRDs and no external metrics API here, so each tier gets an `autoscaling/v2` HorizontalPodAutoscaler
   (on CPU), and the tiers and the router their PodDisruptionBudgets: the API server accepts every one;
2. the controller manager's HPA controller is a real autoscaler: it raises the large tier from the one replica a
   Deployment starts with to its `minReplicas` 2; the test sets the small tier's replicas to 3 through the scale
   subresource, under a field manager of its own, as any other autoscaler would;
3. a spec change that rewrites both tier Deployments (a node selector, a price) is reconciled, and so are the
   drift reconciles after it (every second here): the replicas the autoscalers set are still there;
4. with KEDA's ScaledObject CRD installed (scripts/fetch-keda-crd.sh; skipped without it), the operator discovers
   KEDA and replaces each HPA with a ScaledObject (the small tier's from zero), which the API server validates
   against KEDA's own schema; the replicas are still left alone.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
from cluster_testkit import GROUP, REPO, Installed, restricted_namespace, wait_for, yaml_docs

pytestmark = pytest.mark.timeout(300)

NAMESPACE = "autoscaled"
NAME = "chat"
AUTOSCALER_FIELD_MANAGER = "an-autoscaler"  # the test playing an autoscaler other than the HPA controller
SMALL_REPLICAS = 3  # what that autoscaler sets the small tier to
LARGE_MIN_REPLICAS = 2  # what the HPA controller raises the large tier to
DRIFT_RECONCILES_S = 4.0  # several drift reconciles (cluster_testkit.INTERVAL_S apart)


def autoscaled_cascade(*, node_selector: dict[str, str] | None = None, large_price: float = 2.0) -> dict[str, Any]:
    def tier(name: str, model: str, autoscaling: dict[str, Any], price: float) -> dict[str, Any]:
        return {
            "name": name,
            "model": {"uri": model},
            "engine": "transformers",
            "resources": {"gpus": 0, "cpu": 1, "memory": "2Gi"},
            "autoscaling": autoscaling,
            "price": {"currency": "USD", "inputPerMillion": price, "outputPerMillion": price},
            **({"nodeSelector": node_selector} if node_selector else {}),
        }

    small = tier(
        "small",
        "pkg://smollm2-135m-instruct",
        {"minReplicas": 0, "maxReplicas": 4, "targetPerReplica": 2, "scaleDownDelaySeconds": 60},
        0.1,
    )
    small["accept"] = {"method": "geometricMean", "threshold": 0.6}
    large = tier(
        "large",
        "pkg://qwen2.5-coder-0.5b-instruct",
        {"minReplicas": LARGE_MIN_REPLICAS, "maxReplicas": 4, "targetPerReplica": 2},
        large_price,
    )
    return {
        "apiVersion": GROUP,
        "kind": "ModelCascade",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {"task": "chat", "tiers": [small, large]},
    }


def _get(installed: Installed, resource: str, name: str, group: str) -> dict[str, Any] | None:
    return installed.plane.get(resource, name, namespace=NAMESPACE, group=group)


def deployment(installed: Installed, tier: str) -> dict[str, Any]:
    found = _get(installed, "deployments", f"{NAME}-{tier}", "apps/v1")
    assert found is not None, f"no Deployment {NAME}-{tier}"
    return found


def replicas(installed: Installed) -> dict[str, int]:
    return {tier: deployment(installed, tier)["spec"].get("replicas") for tier in ("small", "large")}


def owned_by_the_cascade(installed: Installed, child: dict[str, Any]) -> bool:
    uid = installed.cascade(NAME, NAMESPACE)["metadata"]["uid"]
    return any(ref.get("uid") == uid and ref.get("controller") for ref in child["metadata"].get("ownerReferences", []))


def keda_crd() -> str:
    """The ScaledObject CRD file (fetched once into the cache), or a skip saying why there is none."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "fetch-keda-crd.sh")], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"no KEDA ScaledObject CRD here (scripts/fetch-keda-crd.sh failed): {done.stderr[-500:]}")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def autoscaled(installed: Installed) -> Installed:
    installed.plane.kubectl("apply", "-f", "-", input=yaml_docs(restricted_namespace(NAMESPACE), autoscaled_cascade()))
    installed.wait_ready(NAME, NAMESPACE, timeout=120)
    return installed


def test_the_api_server_accepts_the_hpas_and_the_disruption_budgets(autoscaled: Installed) -> None:
    for tier, min_replicas in (("small", 1), ("large", LARGE_MIN_REPLICAS)):  # an HPA keeps one: never to zero
        hpa = _get(autoscaled, "horizontalpodautoscalers", f"{NAME}-{tier}", "autoscaling/v2")
        assert hpa is not None, f"no HPA for tier {tier}"
        assert owned_by_the_cascade(autoscaled, hpa)
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{NAME}-{tier}"}
        assert (spec["minReplicas"], spec["maxReplicas"]) == (min_replicas, 4)
        assert [m["type"] for m in spec["metrics"]] == ["Resource"]  # no external metrics API here: CPU
    for component in ("small", "large", "router"):
        budget = _get(autoscaled, "poddisruptionbudgets", f"{NAME}-{component}", "policy/v1")
        assert budget is not None, f"no PodDisruptionBudget for {component}"
        assert owned_by_the_cascade(autoscaled, budget)
        assert budget["spec"]["maxUnavailable"] == 1
        pods = autoscaled.plane.list(
            "pods",
            namespace=NAMESPACE,
            label_selector=",".join(f"{k}={v}" for k, v in budget["spec"]["selector"]["matchLabels"].items()),
        )
        assert pods, f"the budget of {component} selects no pod"


def test_a_reconcile_leaves_the_replicas_the_autoscalers_set(autoscaled: Installed) -> None:
    plane = autoscaled.plane
    wait_for(
        lambda: replicas(autoscaled)["large"] == LARGE_MIN_REPLICAS,
        what="the HPA controller to raise the large tier to its minReplicas",
        context=autoscaled.context(NAMESPACE),
    )
    with plane.client() as client:
        client.patch(
            f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}-small/scale",
            params={"fieldManager": AUTOSCALER_FIELD_MANAGER},
            content=json.dumps({"spec": {"replicas": SMALL_REPLICAS}}),
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()
    assert replicas(autoscaled) == {"small": SMALL_REPLICAS, "large": LARGE_MIN_REPLICAS}

    selector = {"kubernetes.io/os": "linux"}  # every kwok node has it: the pods still schedule
    plane.kubectl("apply", "-f", "-", input=yaml_docs(autoscaled_cascade(node_selector=selector, large_price=3.0)))
    wait_for(
        lambda: all(
            deployment(autoscaled, tier)["spec"]["template"]["spec"].get("nodeSelector", {}).items() >= selector.items()
            for tier in ("small", "large")
        ),
        what="the operator to replace both tier Deployments",
        context=autoscaled.context(NAMESPACE),
    )
    assert replicas(autoscaled) == {"small": SMALL_REPLICAS, "large": LARGE_MIN_REPLICAS}
    deadline = time.monotonic() + DRIFT_RECONCILES_S
    while time.monotonic() < deadline:
        assert replicas(autoscaled) == {"small": SMALL_REPLICAS, "large": LARGE_MIN_REPLICAS}
        time.sleep(0.25)
    autoscaled.wait_ready(NAME, NAMESPACE)
    managers = {entry["manager"] for entry in deployment(autoscaled, "small")["metadata"]["managedFields"]}
    assert AUTOSCALER_FIELD_MANAGER in managers, managers


def test_with_keda_installed_the_operator_renders_scaled_objects_the_api_server_accepts(autoscaled: Installed) -> None:
    plane = autoscaled.plane
    crd = keda_crd()
    plane.kubectl("apply", "--server-side", "-f", crd)
    plane.kubectl("wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=60s")

    def scaled_objects() -> dict[str, dict[str, Any]] | None:
        found = {
            tier: _get(autoscaled, "scaledobjects", f"{NAME}-{tier}", "keda.sh/v1alpha1") for tier in ("small", "large")
        }
        hpas = plane.list("horizontalpodautoscalers", namespace=NAMESPACE, group="autoscaling/v2")
        return {tier: obj for tier, obj in found.items() if obj} if all(found.values()) and not hpas else None

    # The operator looks KEDA up at most once a minute (operator/autoscaling_apis.py).
    found = wait_for(
        scaled_objects, timeout=120, what="ScaledObjects in place of the HPAs", context=autoscaled.context(NAMESPACE)
    )
    small, large = found["small"], found["large"]
    assert owned_by_the_cascade(autoscaled, small) and owned_by_the_cascade(autoscaled, large)
    assert (small["spec"]["minReplicaCount"], small["spec"]["maxReplicaCount"]) == (0, 4)
    assert (large["spec"]["minReplicaCount"], large["spec"]["maxReplicaCount"]) == (LARGE_MIN_REPLICAS, 4)
    (trigger,) = small["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert f'cascade="{NAME}"' in trigger["metadata"]["query"] and 'tier="small"' in trigger["metadata"]["query"]
    # No KEDA controller runs here: nothing but the operator touched the Deployments, and it left their replicas.
    assert replicas(autoscaled) == {"small": SMALL_REPLICAS, "large": LARGE_MIN_REPLICAS}
