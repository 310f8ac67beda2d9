"""Both install paths of docs/install.md on a real control plane, each through to its documented removal.

- `kubectl apply -f crds/ -f deploy/kascade.yaml`: the namespace enforces Pod Security "restricted",
  the operator's pod is admitted and Ready; `kubectl delete -f deploy/kascade.yaml` and
  `kubectl delete -f crds/` complete.
- `helm install` (CRDs from the chart's crds/, images from a registry of the user's), `helm upgrade`
  with changed values rolls the operator to the new settings, `helm uninstall` and the CRDs'
  removal complete.

Nothing here runs the operator's code: that is tests/cluster/test_cascades.py. A removal that hangs
fails on kubectl's or helm's own timeout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml
from cluster_testkit import CHART, CRDS, DEPLOY, SYSTEM, run_helm

from kascade.testing.control_plane import ControlPlane

pytestmark = pytest.mark.timeout(600)

CRD_NAMES = ("modelcascades.kascade.dev", "distillations.kascade.dev")


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    assert control_plane.get("namespaces", SYSTEM) is None, "these tests install on an empty cluster: they run first"
    yield control_plane


def operator_deployment(plane: ControlPlane) -> dict:
    found = plane.get("deployments", "kascade-operator", namespace=SYSTEM, group="apps/v1")
    assert found is not None, "no operator Deployment"
    return found


def crds_present(plane: ControlPlane) -> set[str]:
    return {name for name in CRD_NAMES if plane.get("customresourcedefinitions", name, group="apiextensions.k8s.io/v1")}


def wait_namespace_gone(plane: ControlPlane) -> None:
    plane.kubectl("wait", "--for=delete", f"namespace/{SYSTEM}", "--timeout=90s", check=False)
    assert plane.get("namespaces", SYSTEM) is None, "the namespace did not go"


def test_kubectl_apply_and_the_documented_removal(plane: ControlPlane) -> None:
    plane.kubectl("apply", "-f", str(CRDS))
    plane.kubectl("apply", "-f", str(DEPLOY))
    plane.kubectl("-n", SYSTEM, "rollout", "status", "deployment/kascade-operator", "--timeout=120s")
    namespace = plane.get("namespaces", SYSTEM)
    assert namespace is not None
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert crds_present(plane) == set(CRD_NAMES)

    plane.kubectl("delete", "-f", str(DEPLOY), "--timeout=120s")
    plane.kubectl("delete", "-f", str(CRDS), "--timeout=120s")
    assert crds_present(plane) == set()
    wait_namespace_gone(plane)


def test_helm_install_upgrade_uninstall(plane: ControlPlane) -> None:
    registry = "registry.example.com/platform"
    plane.kubectl("create", "namespace", SYSTEM)
    plane.kubectl("label", "namespace", SYSTEM, "pod-security.kubernetes.io/enforce=restricted")
    run_helm(
        plane,
        "install",
        "kascade",
        str(CHART),
        "--namespace",
        SYSTEM,
        "--set",
        f"imageRegistry={registry}",
        "--wait",
        "--timeout",
        "120s",
    )
    assert crds_present(plane) == set(CRD_NAMES)
    deployment = operator_deployment(plane)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith(f"{registry}/"), container["image"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["KASCADE_RUNTIME_IMAGE"].startswith(f"{registry}/"), env
    assert env["KASCADE_RECONCILE_INTERVAL_SECONDS"] == "15"

    run_helm(
        plane,
        "upgrade",
        "kascade",
        str(CHART),
        "--namespace",
        SYSTEM,
        "--reuse-values",
        "--set",
        "operator.reconcileIntervalSeconds=30",
        "--set",
        "operator.logLevel=verbose",
        "--wait",
        "--timeout",
        "120s",
    )
    deployment = operator_deployment(plane)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["KASCADE_RECONCILE_INTERVAL_SECONDS"] == "30"
    assert "--verbose" in container.get("args", []), container.get("args")
    assert deployment["status"].get("updatedReplicas") == deployment["status"].get("readyReplicas") == 1
    history = json.loads(run_helm(plane, "history", "kascade", "--namespace", SYSTEM, "-o", "json").stdout)
    assert [entry["status"] for entry in history] == ["superseded", "deployed"]

    run_helm(plane, "uninstall", "kascade", "--namespace", SYSTEM, "--wait", "--timeout", "120s")
    assert plane.get("deployments", "kascade-operator", namespace=SYSTEM, group="apps/v1") is None
    # The CRDs are kept by helm (they hold every cascade): removing them is the documented second step.
    assert crds_present(plane) == set(CRD_NAMES)
    crd_files = [str(p) for p in sorted((CHART / "crds").glob("*.yaml"))]
    assert crd_files, "the chart ships its CRDs in crds/"
    for path in crd_files:
        for document in yaml.safe_load_all(open(path)):
            assert document is None or document["kind"] == "CustomResourceDefinition"
    plane.kubectl("delete", *[arg for path in crd_files for arg in ("-f", path)], "--timeout=120s")
    assert crds_present(plane) == set()
    plane.kubectl("delete", "namespace", SYSTEM, "--timeout=90s")
