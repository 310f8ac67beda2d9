"""Operator scale: 200 ModelCascades applied at once to the API-server stand-in.

The real operator runs as its own process (`kascade operator --namespace bench
--standalone`), so its memory is its own; the stand-in (kascade.testing)
runs in this process, records every request, and its Deployment controller
makes the children ready. Measured:

- time until every cascade is reconciled (observedGeneration set) and Ready;
- API requests per reconcile: for the first reconcile of each cascade (kopf's
  own requests included), and for a timer reconcile in steady state;
- writes in steady state over a window of several timer intervals (target: 0);
- the operator's memory (RSS when idle, after the load, and its peak) and CPU time.

    python bench/operator_scale.py                      # 200 cascades, timer every 10 s, 30 s steady window
    python bench/operator_scale.py --cascades 50 --interval 5 --window 15
    python bench/operator_scale.py --markdown           # the table as Markdown, for docs/operator.md
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from kascade.runtime.serving import free_port

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
EXAMPLE = REPO / "examples" / "chat-vllm-gpu.yaml"
OPERATOR_AGENTS = ("kopf/", "kascade-operator/")


@dataclass
class Process:
    """A process's memory and CPU, read from /proc (Linux)."""

    pid: int

    def _status(self) -> dict[str, str]:
        lines = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def rss_mib(self) -> float:
        return int(self._status()["VmRSS"].split()[0]) / 1024

    def peak_rss_mib(self) -> float:
        return int(self._status()["VmHWM"].split()[0]) / 1024

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    cascades: int
    interval_s: float
    window_s: float
    first_reconciled_s: float = 0.0
    all_ready_s: float = 0.0
    first_requests: collections.Counter[str] = field(default_factory=collections.Counter)
    steady_requests: collections.Counter[str] = field(default_factory=collections.Counter)
    steady_reconciles: int = 0
    first_reconciles: int = 0
    steady_writes: list[str] = field(default_factory=list)
    rss_idle_mib: float = 0.0
    rss_loaded_mib: float = 0.0
    rss_peak_mib: float = 0.0
    cpu_first_s: float = 0.0
    cpu_steady_s: float = 0.0
    standin_cpu_first_s: float = 0.0

    def rows(self) -> list[tuple[str, str]]:
        first_total = sum(self.first_requests.values())
        first_writes = sum(n for key, n in self.first_requests.items() if key.split()[0] in WRITE_VERBS)
        steady_total = sum(self.steady_requests.values())
        per = max(self.steady_reconciles, 1)
        return [
            ("cascades applied at once", f"{self.cascades}"),
            ("until all reconciled (observedGeneration set)", f"{self.first_reconciled_s:.1f} s"),
            ("until all Ready (children ready, status written)", f"{self.all_ready_s:.1f} s"),
            (
                (
                    f"requests per cascade until all reconciled ({self.first_reconciles / self.cascades:.1f} "
                    "reconciles each, kopf's requests included)"
                ),
                f"{first_total / self.cascades:.1f} ({first_writes / self.cascades:.1f} writes)",
            ),
            (
                "requests per steady-state timer reconcile",
                f"{steady_total / per:.1f}{'' if self.steady_writes else ' (reads only)'}",
            ),
            (
                (
                    f"writes in steady state ({self.window_s:g} s window, timer every {self.interval_s:g} s, "
                    f"{self.steady_reconciles} reconciles)"
                ),
                f"{len(self.steady_writes)}",
            ),
            (
                "operator RSS: idle / after the load / peak",
                f"{self.rss_idle_mib:.0f} / {self.rss_loaded_mib:.0f} / {self.rss_peak_mib:.0f} MiB",
            ),
            ("operator CPU: first reconciles / steady window", f"{self.cpu_first_s:.1f} s / {self.cpu_steady_s:.1f} s"),
            ("stand-in CPU (this process) until all Ready", f"{self.standin_cpu_first_s:.1f} s"),
        ]

    def breakdown(self, counter: collections.Counter[str], per: int) -> list[tuple[str, str]]:
        return [(key, f"{n / per:.2f}") for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))]


WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def table(rows: list[tuple[str, str]], headers: tuple[str, str], markdown: bool) -> str:
    if markdown:
        lines = [f"| {headers[0]} | {headers[1]} |", "|---|---:|"]
        lines += [f"| {a} | {b} |" for a, b in rows]
        return "\n".join(lines)
    width = max(len(a) for a, _ in [*rows, headers])
    value_width = max(len(b) for _, b in [*rows, headers])
    rule = "-" * (width + value_width + 3)
    lines = [f"{headers[0]:<{width}}   {headers[1]:>{value_width}}", rule]
    lines += [f"{a:<{width}}   {b:>{value_width}}" for a, b in rows]
    return "\n".join(lines)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.5) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - start


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def request_key(record: Any) -> str:
    resource = record.resource if record.subresource is None else f"{record.resource}/{record.subresource}"
    return f"{record.verb} {resource}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cascades", type=int, default=200)
    parser.add_argument("--interval", type=float, default=10.0, help="KASCADE_RECONCILE_INTERVAL_SECONDS")
    parser.add_argument("--window", type=float, default=30.0, help="steady-state window in seconds")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="also print requests per reconcile by verb/resource")
    args = parser.parse_args(argv)

    from kascade.testing import StandinApiServer

    result = Result(cascades=args.cascades, interval_s=args.interval, window_s=args.window)
    template = yaml.safe_load(EXAMPLE.read_text())
    with (
        tempfile.TemporaryDirectory(prefix="kascade-bench-") as tmp,
        StandinApiServer(crd_paths=[REPO / "crds"], controller_delay=0.5, history_limit=200_000) as server,
    ):
        server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        server.add_node("gpu-l4", labels={"nvidia.com/gpu.product": "NVIDIA-L4"}, capacity={"nvidia.com/gpu": "8"})
        server.add_node(
            "gpu-h100", labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, capacity={"nvidia.com/gpu": "8"}
        )
        for name, key in (("hf-token", "token"), ("chat-client-keys", "keys")):
            server.create(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "stringData": {key: "x"},
                }
            )

        liveness = free_port()
        log_path = Path(tmp) / "operator.log"
        env = {
            **os.environ,
            "KUBECONFIG": str(server.kubeconfig_path),
            "KASCADE_RECONCILE_INTERVAL_SECONDS": str(args.interval),
        }
        with log_path.open("wb") as log:
            operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kascade",
                    "operator",
                    "--namespace",
                    NAMESPACE,
                    "--standalone",
                    "--liveness",
                    f"http://127.0.0.1:{liveness}/healthz",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        proc = Process(operator.pid)
        try:

            def live() -> bool:
                if operator.poll() is not None:
                    raise SystemExit(f"the operator exited:\n{log_path.read_text()[-3000:]}")
                try:
                    return httpx.get(f"http://127.0.0.1:{liveness}/healthz", timeout=1).status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(live, 60, "the operator to start")
            time.sleep(1.0)
            result.rss_idle_mib = proc.rss_mib()
            cpu0 = proc.cpu_seconds()
            own0 = own_cpu_seconds()
            mark = server.mark()

            names = [f"chat-{index:03d}" for index in range(args.cascades)]
            start = time.monotonic()
            with httpx.Client(base_url=server.url, timeout=30) as client:
                path = f"/apis/kascade.dev/v1alpha1/namespaces/{NAMESPACE}/modelcascades"
                for name in names:
                    body = {**template, "metadata": {"name": name, "namespace": NAMESPACE}}
                    response = client.post(path, json=body)
                    response.raise_for_status()

            def count(predicate: Callable[[dict[str, Any]], bool]) -> int:
                return sum(1 for mc in server.objects("modelcascades", NAMESPACE) if predicate(mc))

            def reconciled(mc: dict[str, Any]) -> bool:
                status = mc.get("status") or {}
                return status.get("observedGeneration") == mc["metadata"].get("generation")

            def ready(mc: dict[str, Any]) -> bool:
                conditions = (mc.get("status") or {}).get("conditions") or []
                return reconciled(mc) and any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

            wait_until(lambda: count(reconciled) == args.cascades, args.timeout, "every cascade reconciled")
            result.first_reconciled_s = time.monotonic() - start
            # The first reconcile of a cascade is done when its status is written; readiness needs the next one.
            first = [r for r in server.requests[mark:] if r.user_agent.startswith(OPERATOR_AGENTS) and r.resource]
            result.first_requests = collections.Counter(request_key(r) for r in first)
            result.first_reconciles = sum(1 for r in first if r.verb == "list" and r.resource == "deployments")
            wait_until(lambda: count(ready) == args.cascades, args.timeout, "every cascade Ready")
            result.all_ready_s = time.monotonic() - start
            result.cpu_first_s = proc.cpu_seconds() - cpu0
            result.standin_cpu_first_s = own_cpu_seconds() - own0

            # Settle: let the last status writes and events drain, then watch a quiet window.
            time.sleep(args.interval + 2)
            result.rss_loaded_mib = proc.rss_mib()
            cpu1 = proc.cpu_seconds()
            mark = server.mark()
            time.sleep(args.window)
            steady = [r for r in server.requests[mark:] if r.user_agent.startswith(OPERATOR_AGENTS) and r.resource]
            result.cpu_steady_s = proc.cpu_seconds() - cpu1
            result.steady_requests = collections.Counter(request_key(r) for r in steady)
            result.steady_reconciles = sum(1 for r in steady if r.verb == "list" and r.resource == "deployments")
            result.steady_writes = [str(r) for r in steady if r.is_write]
            result.rss_peak_mib = proc.peak_rss_mib()
        finally:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.kill()

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )
    print(f"command: python bench/operator_scale.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print()
    print(table(result.rows(), ("operator_scale", "value"), args.markdown))
    if result.steady_writes:
        print("\nwrites in steady state:\n  " + "\n  ".join(result.steady_writes[:20]))
    if args.breakdown:
        print()
        print(
            table(
                result.breakdown(result.first_requests, args.cascades),
                ("first reconcile: requests", "per cascade"),
                args.markdown,
            )
        )
        print()
        print(
            table(
                result.breakdown(result.steady_requests, max(result.steady_reconciles, 1)),
                ("steady-state: requests", "per reconcile"),
                args.markdown,
            )
        )
    return 0 if not result.steady_writes else 1


if __name__ == "__main__":
    raise SystemExit(main())
