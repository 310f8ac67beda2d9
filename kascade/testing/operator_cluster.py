"""The real operator process against the API-server stand-in, with the real kubectl: what end-to-end tests drive.

`Cluster` starts `kascade operator` as a subprocess aimed at a `StandinApiServer`,
runs kubectl against it, and reads what the stand-in holds; `wait_for` polls.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from kascade.runtime.serving import free_port
from kascade.testing.apiserver import StandinApiServer
from kascade.testing.kubetools import kubectl_path

OPERATOR_AGENTS = ("kopf/", "kascade-operator/")


@dataclass
class Cluster:
    server: StandinApiServer
    tmp: Path
    operator: subprocess.Popen[bytes] | None = None
    operator_log: Path | None = None
    liveness_port: int = 0
    namespace: str = "llm"
    name: str = "chat"
    child_resources: tuple[str, ...] = ()
    interval_s: float = 0.5

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            [
                str(kubectl_path()),
                "--kubeconfig",
                str(self.server.kubeconfig_path),
                "--cache-dir",
                str(self.tmp / "kube-cache"),
                *args,
            ],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}\n{self.log_tail()}"
            )
        return done.stdout

    def start_operator(self, **settings: str) -> None:
        """`kascade operator` as a subprocess; `settings`: more KASCADE_* variables."""
        self.liveness_port = free_port()
        self.operator_log = self.tmp / f"operator-{time.monotonic_ns()}.log"
        env = {
            **os.environ,
            "KUBECONFIG": str(self.server.kubeconfig_path),
            "KASCADE_RECONCILE_INTERVAL_SECONDS": str(self.interval_s),
            "KASCADE_ROUTER_STATUS_REPORT_INTERVAL_SECONDS": "0.3",
            "PYTHONUNBUFFERED": "1",
            **settings,
        }
        with self.operator_log.open("wb") as log:
            self.operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kascade",
                    "operator",
                    "--namespace",
                    self.namespace,
                    "--standalone",
                    "--liveness",
                    f"http://127.0.0.1:{self.liveness_port}/healthz",
                    "--verbose",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.tmp,
            )
        wait_for(lambda: self._live(), timeout=30, what="the operator's liveness endpoint")

    def _live(self) -> bool:
        assert self.operator is not None
        if self.operator.poll() is not None:
            raise AssertionError(f"the operator exited with {self.operator.returncode}:\n{self.log_tail()}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.send_signal(signal.SIGTERM)
            try:
                self.operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait(timeout=5)
        self.operator = None

    def log_tail(self, lines: int = 60) -> str:
        if self.operator_log is None or not self.operator_log.exists():
            return ""
        return "operator log:\n" + "\n".join(self.operator_log.read_text(errors="replace").splitlines()[-lines:])

    # --- reading the stand-in ---

    def cascade(self) -> dict[str, Any]:
        found = self.server.get("modelcascades", self.name, self.namespace)
        assert found is not None, "the ModelCascade is gone"
        return found

    def status(self) -> dict[str, Any]:
        return self.cascade().get("status") or {}

    def condition(self, type_: str) -> dict[str, Any]:
        return next((c for c in self.status().get("conditions") or [] if c["type"] == type_), {})

    def children(self) -> dict[tuple[str, str], dict[str, Any]]:
        found = {}
        for resource in self.child_resources:
            for obj in self.server.objects(resource, self.namespace, label_selector=f"kascade.dev/cascade={self.name}"):
                found[(resource, obj["metadata"]["name"])] = obj
        return found

    def operator_writes(self, since: int) -> list[Any]:
        return [r for r in self.server.writes(since=since) if r.user_agent.startswith(OPERATOR_AGENTS)]


def wait_for(
    condition: Callable[[], Any],
    *,
    timeout: float = 20.0,
    what: str = "a condition",
    context: Callable[[], str] = lambda: "",
) -> Any:
    deadline = time.monotonic() + timeout
    value = condition()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value: {value!r})\n{context()}")
        time.sleep(0.05)
        value = condition()
    return value


def manifests(*documents: dict[str, Any]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)
