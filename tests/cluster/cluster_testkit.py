"""What the tests on the real control plane share: the installed chart, the operator as a process, waiting.

A helper module of tests/cluster (imported by the test files next to it and by its conftest).
- `start_operator(plane, tmp)`: `kascade operator` as the chart's Deployment runs it, authenticated
  with a TokenRequest token of the chart's ServiceAccount (the chart's RBAC is what is enforced);
- `Installed`: the control plane with the chart installed and that operator running;
- `wait_for`, `yaml_docs`, `restricted_namespace`, `shared_claim`, `secret`: small builders.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from kascade.runtime.serving import free_port
from kascade.testing.control_plane import ControlPlane
from kascade.testing.operator_cluster import wait_for as poll_until

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kascade"
CRDS = REPO / "crds"
DEPLOY = REPO / "deploy" / "kascade.yaml"
SYSTEM = "kascade-system"
GROUP = "kascade.dev/v1alpha1"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
INTERVAL_S = "1"


def run_helm(
    plane: ControlPlane, *args: str, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """The real helm against the control plane (admin's kubeconfig)."""
    from kascade.testing.kubetools import helm_path

    cache = plane.folder / "helm"
    env = {
        **os.environ,
        "KUBECONFIG": str(plane.kubeconfig),
        "HELM_CACHE_HOME": str(cache / "cache"),
        "HELM_CONFIG_HOME": str(cache / "config"),
        "HELM_DATA_HOME": str(cache / "data"),
    }
    done = subprocess.run(
        [str(helm_path()), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


# The stand-in tests' poller, with a longer default: real controllers take seconds, not milliseconds.
wait_for = functools.partial(poll_until, timeout=60.0)


def yaml_docs(*documents: dict[str, Any]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 60) -> str:
        return "operator log:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@dataclass
class Installed:
    plane: ControlPlane
    tmp: Path
    operator: OperatorProcess

    def cascade(self, name: str, namespace: str) -> dict[str, Any]:
        found = self.plane.get("modelcascades", name, namespace=namespace, group=GROUP)
        assert found is not None, f"ModelCascade {namespace}/{name} is gone"
        return found

    def condition(self, name: str, namespace: str, type_: str) -> dict[str, Any]:
        status = self.cascade(name, namespace).get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})

    def context(self, namespace: str) -> Callable[[], str]:
        def describe() -> str:
            events = self.plane.kubectl(
                "get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False
            ).stdout
            cascades = self.plane.kubectl("get", "modelcascades", "-n", namespace, "-o", "yaml", check=False).stdout
            pods = self.plane.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
            return f"{cascades[-3000:]}\n{pods}\n{events[-3000:]}\n{self.operator.tail()}"

        return describe

    def wait_ready(self, name: str, namespace: str, *, timeout: float = 120) -> None:
        wait_for(
            lambda: self.condition(name, namespace, "Ready").get("status") == "True",
            timeout=timeout,
            what=f"{namespace}/{name} Ready",
            context=self.context(namespace),
        )


def start_operator(plane: ControlPlane, tmp: Path) -> OperatorProcess:
    """`kascade operator` as the chart's Deployment runs it, but as a process here with the chart's identity."""
    deployment = plane.get("deployments", "kascade-operator", namespace=SYSTEM, group="apps/v1")
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    token = plane.token_for(deployment["spec"]["template"]["spec"]["serviceAccountName"], SYSTEM)
    kubeconfig = plane.kubeconfig_for_token(token, tmp / "operator.kubeconfig")
    env = {
        **os.environ,
        **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e},
        "KUBECONFIG": str(kubeconfig),
        "KASCADE_RECONCILE_INTERVAL_SECONDS": INTERVAL_S,
        "KASCADE_ROUTER_STATUS_REPORT_INTERVAL_SECONDS": "0.5",
        "PYTHONUNBUFFERED": "1",
    }
    args = [a for a in container.get("args", []) if not a.startswith("--liveness")]
    port = free_port()
    log = tmp / "operator.log"
    assert container["command"][:2] == ["kascade", "operator"], container["command"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kascade",
                "operator",
                *args,
                "--standalone",
                "--liveness",
                f"http://127.0.0.1:{port}/healthz",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
        )
    operator = OperatorProcess(process, log)

    def live() -> bool:
        assert process.poll() is None, f"the operator exited with {process.returncode}\n{operator.tail()}"
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        return False

    wait_for(live, timeout=60, what="the operator's liveness endpoint", context=operator.tail)
    return operator


def restricted_namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": RESTRICTED}}


def shared_claim(name: str, namespace: str) -> list[dict[str, Any]]:
    """A ReadWriteMany claim bound to a volume of its own (nothing mounts it: kwok runs no containers)."""
    volume = f"{namespace}-{name}"
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "100Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "nfs": {"server": "nfs.invalid", "path": f"/{volume}"},
                "claimRef": {"namespace": namespace, "name": name},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "100Gi"}},
            },
        },
    ]


def secret(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": data,
    }
