"""The real control plane for tests/cluster: one per test session, started on first use.

`control_plane` builds the binaries if they are not cached (scripts/build-control-plane.sh) and
starts etcd, the API server, the controller manager, the scheduler and kwok on loopback ports.
Without Go and without a cached build the suite is skipped with the reason, unless
KASCADE_REQUIRE_CONTROL_PLANE=1 (set by .ci/run), which turns that into a failure.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kascade.testing.control_plane import ControlPlane, ControlPlaneUnavailable, build_control_plane
from kascade.testing.kubetools import helm_path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kascade"
CRDS = REPO / "crds"
DEPLOY = REPO / "deploy" / "kascade.yaml"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    try:
        bin_dir = build_control_plane()
    except ControlPlaneUnavailable as error:
        if os.environ.get("KASCADE_REQUIRE_CONTROL_PLANE") == "1":
            raise
        pytest.skip(f"no real control plane here: {error}")
    with ControlPlane(tmp_path_factory.mktemp("control-plane"), bin_dir=bin_dir) as plane:
        yield plane


def run_helm(plane: ControlPlane, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The real helm against the control plane (admin's kubeconfig)."""
    cache = plane.folder / "helm"
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig), "HELM_CACHE_HOME": str(cache / "cache"),
           "HELM_CONFIG_HOME": str(cache / "config"), "HELM_DATA_HOME": str(cache / "data")}  # fmt: skip
    done = subprocess.run([str(helm_path()), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done
