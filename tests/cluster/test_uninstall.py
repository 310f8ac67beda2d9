"""The documented uninstall (docs/install.md) with cascades still running: it completes, nothing hangs.

Runs last, on what the other modules left: cascades of every example, their children and runs. The
operator goes first (its process and the chart's release), then the CRDs, which deletes every
ModelCascade and Distillation; then the namespaces, which the garbage collector empties.
"""

from __future__ import annotations

import pytest
from cluster_testkit import CRDS, GROUP, SYSTEM, Installed, run_helm, wait_for

pytestmark = pytest.mark.timeout(600)


def test_operator_first_then_the_crds_then_the_namespaces(installed: Installed) -> None:
    plane = installed.plane
    namespaces = sorted({c["metadata"]["namespace"] for c in plane.list("modelcascades", group=GROUP)})
    assert namespaces, "the other modules left cascades to uninstall around"
    installed.operator.stop()
    run_helm(plane, "uninstall", "kascade", "--namespace", SYSTEM, "--wait", "--timeout", "120s")
    plane.kubectl("delete", "-f", str(CRDS), "--timeout=120s")  # hangs on a finalizer nobody removes: fails
    for crd in ("modelcascades.kascade.dev", "distillations.kascade.dev"):
        assert plane.get("customresourcedefinitions", crd, group="apiextensions.k8s.io/v1") is None
    for namespace in namespaces:
        plane.kubectl("delete", "namespace", namespace, "--wait=false")
    wait_for(
        lambda: not any(plane.get("namespaces", ns) for ns in namespaces),
        timeout=120,
        what="the cascades' namespaces to go",
        context=lambda: str([(ns, (plane.get("namespaces", ns) or {}).get("status")) for ns in namespaces]),
    )
