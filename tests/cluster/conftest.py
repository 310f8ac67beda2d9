"""The real control plane for tests/cluster: one per test session, started on first use.

`control_plane` builds the binaries if they are not cached (scripts/build-control-plane.sh) and
starts etcd, the API server, the controller manager, the scheduler and kwok on loopback ports.
Without Go and without a cached build the suite is skipped with the reason, unless
KASCADE_REQUIRE_CONTROL_PLANE=1 (set by .ci/run), which turns that into a failure.

`installed`: the chart installed (helm, into a namespace enforcing Pod Security "restricted") on
nodes that offer the GPU types the examples ask for, and the operator running as a process with
the chart's ServiceAccount token. The modules run in the order of `MODULE_ORDER`: the install
paths on an empty cluster first, the documented uninstall with cascades still there last.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_testkit import (
    CHART,
    GPU_TAINT,
    SYSTEM,
    Installed,
    restricted_namespace,
    run_helm,
    start_operator,
    yaml_docs,
)

from kascade.testing.control_plane import ControlPlane, ControlPlaneUnavailable, build_control_plane

HERE = Path(__file__).parent
MODULE_ORDER = (
    "test_install.py",
    "test_cascades.py",
    "test_distillation.py",
    "test_refused_manifests.py",
    "test_autoscaling.py",
    "test_uninstall.py",
)
# GPU types the examples ask for, and how many GPUs a node of each offers.
GPU_NODES = {"NVIDIA-L4": 8, "NVIDIA-H100-80GB-HBM3": 8, "NVIDIA-L40S": 4, "NVIDIA-T4": 4}
ZONE = {"topology.kubernetes.io/zone": "us-east-1a"}  # external-last-tier.yaml pins its medium tier to it


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ours = [item for item in items if HERE in Path(str(item.path)).parents]
    for item in ours:
        item.add_marker(pytest.mark.cluster)
        item.add_marker(pytest.mark.slow)
    if not ours:
        return
    rank = {name: index for index, name in enumerate(MODULE_ORDER)}
    first = items.index(ours[0])
    others = [item for item in items if item not in ours]
    ordered = sorted(ours, key=lambda item: rank.get(Path(str(item.path)).name, len(rank)))  # stable within a module
    items[:] = others[:first] + ordered + others[first:]


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    try:
        bin_dir = build_control_plane()
    except ControlPlaneUnavailable as error:
        if os.environ.get("KASCADE_REQUIRE_CONTROL_PLANE") == "1":
            raise
        pytest.skip(f"no real control plane here: {error}")
    with ControlPlane(tmp_path_factory.mktemp("control-plane"), bin_dir=bin_dir) as plane:
        plane.add_node("system-1")
        yield plane


@pytest.fixture(scope="session")
def installed(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("installed")
    plane = control_plane
    for index, (product, count) in enumerate(GPU_NODES.items()):
        plane.add_node(
            f"gpu-{index}",
            labels={"nvidia.com/gpu.product": product, **ZONE},
            capacity={"nvidia.com/gpu": str(count)},
            taints=[GPU_TAINT],
        )
    plane.kubectl("apply", "-f", "-", input=yaml_docs(restricted_namespace(SYSTEM)))
    run_helm(plane, "install", "kascade", str(CHART), "--namespace", SYSTEM, "--wait", "--timeout", "120s")
    operator = start_operator(plane, tmp)
    try:
        yield Installed(plane, tmp, operator)
    finally:
        operator.stop()
