"""Operator scale: N ModelCascades applied at once to the API-server stand-in, for one operator version or several.

The real operator runs as its own process (`kascade operator --namespace bench
--standalone`), so its memory is its own; the stand-in (kascade.testing)
runs in this process, records every request, and its Deployment controller
makes the children ready. Measured:

- time until every cascade is reconciled (observedGeneration set) and Ready;
- API requests per cascade until all are reconciled (kopf's own included);
- reads and writes per drift reconcile in steady state, over a window of
  several intervals (target: no write; with the watch cache, no read either);
- the operator's memory (RSS when idle, after the load, and its peak), its CPU
  time, and the objects its watches hold.

Reconciles are counted by the operator's liveness endpoint (its `reconciles`
probe); an operator without it is counted by its Deployment lists (one per
reconcile). `--tree REF` runs the operator of another commit (or folder)
beside this checkout's, one after the other on a fresh stand-in each, with
that tree's CRDs and example: a before/after comparison in one run.

    python bench/operator_scale.py                      # 200 cascades, drift every 10 s, 30 s steady window
    python bench/operator_scale.py --cascades 50 --interval 5 --window 15
    python bench/operator_scale.py --cascades 1000 --tree HEAD~1 --tree .   # before and after, in one run
    python bench/operator_scale.py --markdown           # the table as Markdown, for docs/
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
EXAMPLE = Path("examples") / "chat-vllm-gpu.yaml"
OPERATOR_AGENTS = ("kopf/", "kascade-operator/")
PACKAGE_FOLDERS = ("api", "calibration", "runtime", "operator", "evaluation", "distillation")  # pyproject's package-dir
PROBE_MAX_AGE_S = 10.0  # Kopf collects the liveness probes at most this often


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
    watched_objects: int | None = None

    def rows(self) -> list[tuple[str, str]]:
        first_total = sum(self.first_requests.values())
        first_writes = sum(n for key, n in self.first_requests.items() if key.split()[0] in WRITE_VERBS)
        steady_total = sum(self.steady_requests.values())
        steady_writes = len(self.steady_writes)
        per = max(self.steady_reconciles, 1)
        return [
            ("cascades applied at once", f"{self.cascades}"),
            ("until all reconciled (observedGeneration set)", f"{self.first_reconciled_s:.1f} s"),
            ("until all Ready (children ready, status written)", f"{self.all_ready_s:.1f} s"),
            ("reconciles per cascade until all reconciled", f"{self.first_reconciles / self.cascades:.1f}"),
            (
                "requests per cascade until all reconciled (kopf's requests included)",
                f"{first_total / self.cascades:.1f} ({first_writes / self.cascades:.1f} writes)",
            ),
            (
                f"drift reconciles in the steady window ({self.window_s:g} s, every {self.interval_s:g} s)",
                f"{self.steady_reconciles}",
            ),
            ("reads per drift reconcile", f"{(steady_total - steady_writes) / per:.2f}"),
            ("writes per drift reconcile", f"{steady_writes / per:.2f}"),
            ("requests per second in steady state", f"{steady_total / self.window_s:.1f}"),
            (
                "operator RSS: idle / after the load / peak",
                f"{self.rss_idle_mib:.0f} / {self.rss_loaded_mib:.0f} / {self.rss_peak_mib:.0f} MiB",
            ),
            ("objects the operator's watches hold", "-" if self.watched_objects is None else f"{self.watched_objects}"),
            ("operator CPU: first reconciles / steady window", f"{self.cpu_first_s:.1f} s / {self.cpu_steady_s:.1f} s"),
            ("stand-in CPU (this process) until all Ready", f"{self.standin_cpu_first_s:.1f} s"),
        ]

    def breakdown(self, counter: collections.Counter[str], per: int) -> list[tuple[str, str]]:
        return [(key, f"{n / per:.2f}") for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))]


WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def table(rows: list[tuple[str, ...]], headers: tuple[str, ...], markdown: bool) -> str:
    """Rows of a label and one value per column."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [*rows, headers]) for i in range(len(headers))]

    def line(row: tuple[str, ...]) -> str:
        return "   ".join(f"{cell:<{widths[0]}}" if i == 0 else f"{cell:>{widths[i]}}" for i, cell in enumerate(row))

    return "\n".join([line(headers), "-" * (sum(widths) + 3 * (len(widths) - 1)), *map(line, rows)])


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


@dataclass(frozen=True)
class OperatorTree:
    """Whose operator runs: its label, the folder its CRDs and example come from, the PYTHONPATH that imports it."""

    label: str
    root: Path
    pythonpath: Path | None  # None: this checkout's installed package


def prepare_tree(ref: str, tmp: Path) -> OperatorTree:
    """`.`: this checkout; a folder: that tree; anything else: a git ref of this repository, unpacked under `tmp`.

    A tree imports as `kascade` through symlinks laid out as pyproject's package-dir maps them (as
    scripts/typecheck.sh does), ahead of this checkout's editable install on the PYTHONPATH.
    """
    if ref == ".":
        return OperatorTree("this checkout", REPO, None)
    if Path(ref).is_dir():
        root, label = Path(ref).resolve(), ref
    else:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], capture_output=True, text=True)
        label = commit.stdout.strip() or ref
        root = tmp / f"tree-{label}"
        root.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    package = tmp / f"import-{root.name}" / "kascade"
    package.mkdir(parents=True)
    for entry in (root / "kascade").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for folder in PACKAGE_FOLDERS:
        if (root / folder).is_dir():
            (package / folder).symlink_to(root / folder)
    return OperatorTree(label, root, package.parent)


class Probes:
    """The operator's liveness endpoint: it answers while the operator runs; its JSON holds Kopf's probe results."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._last = 0.0

    def live(self) -> bool:
        try:
            return httpx.get(self.url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def read(self) -> dict[str, Any]:
        """Fresh results: Kopf collects them at most every PROBE_MAX_AGE_S, so wait that long after the last read."""
        time.sleep(max(0.0, self._last + PROBE_MAX_AGE_S + 0.5 - time.monotonic()))
        self._last = time.monotonic()
        answer = httpx.get(self.url, timeout=10).json()
        return answer if isinstance(answer, dict) else {}


def seed(server: Any) -> None:
    """The namespace, two GPU nodes and the Secrets the example names."""
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


def start_operator(
    tree: OperatorTree, server: Any, interval: float, log_path: Path
) -> tuple[subprocess.Popen[bytes], Probes]:
    liveness = free_port()
    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig_path), "KASCADE_RECONCILE_INTERVAL_SECONDS": str(interval)}
    if tree.pythonpath is not None:
        env["PYTHONPATH"] = str(tree.pythonpath)
    command = [sys.executable, "-m", "kascade", "operator", "--namespace", NAMESPACE, "--standalone"]
    with log_path.open("wb") as log:
        operator = subprocess.Popen(
            [*command, "--liveness", f"http://127.0.0.1:{liveness}/healthz"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tree.pythonpath or REPO,  # not a folder holding a `kascade/` of its own: that would shadow the layout
        )
    return operator, Probes(f"http://127.0.0.1:{liveness}/healthz")


def count_cascades(server: Any, predicate: Callable[[dict[str, Any]], bool]) -> int:
    """How many stored cascades satisfy `predicate`, read on the stand-in's loop without copying them."""
    kind = server.call(lambda: server.store.kinds.lookup("modelcascades"))
    return server.call(lambda: sum(1 for mc in server.store.list_objects(kind, NAMESPACE) if predicate(mc)))


def reconciled(mc: dict[str, Any]) -> bool:
    return (mc.get("status") or {}).get("observedGeneration") == mc["metadata"].get("generation")


def ready(mc: dict[str, Any]) -> bool:
    conditions = (mc.get("status") or {}).get("conditions") or []
    return reconciled(mc) and any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def operator_requests(server: Any, since: int) -> list[Any]:
    return [r for r in server.requests[since:] if r.user_agent.startswith(OPERATOR_AGENTS) and r.resource]


def reconciles_between(before: dict[str, Any], after: dict[str, Any], requests: list[Any]) -> int:
    """From the `reconciles` probe when the operator has it, else its Deployment lists (one per reconcile)."""
    if "reconciles" in before and "reconciles" in after:
        return int(after["reconciles"]) - int(before["reconciles"])
    return sum(1 for r in requests if r.verb == "list" and r.resource == "deployments")


def apply_cascades(server: Any, tree: OperatorTree, cascades: int) -> list[str]:
    template = yaml.safe_load((tree.root / EXAMPLE).read_text())
    names = [f"chat-{index:04d}" for index in range(cascades)]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        path = f"/apis/kascade.dev/v1alpha1/namespaces/{NAMESPACE}/modelcascades"
        for name in names:
            client.post(path, json={**template, "metadata": {"name": name, "namespace": NAMESPACE}}).raise_for_status()
    return names


def first_phase(server: Any, probes: Probes, proc: Process, args: argparse.Namespace, tree: OperatorTree) -> Result:
    """Apply the cascades; until all are reconciled, then Ready: times, requests, reconciles, CPU."""
    result = Result(cascades=args.cascades, interval_s=args.interval, window_s=args.window)
    result.rss_idle_mib = proc.rss_mib()
    cpu0, own0, mark, probe0 = proc.cpu_seconds(), own_cpu_seconds(), server.mark(), probes.read()
    start = time.monotonic()
    apply_cascades(server, tree, args.cascades)
    poll = max(0.5, args.cascades / 2000)
    wait_until(
        lambda: count_cascades(server, reconciled) == args.cascades, args.timeout, "every cascade reconciled", poll
    )
    result.first_reconciled_s = time.monotonic() - start
    first = operator_requests(server, mark)
    result.first_requests = collections.Counter(request_key(r) for r in first)
    wait_until(lambda: count_cascades(server, ready) == args.cascades, args.timeout, "every cascade Ready", poll)
    result.all_ready_s = time.monotonic() - start
    result.cpu_first_s = proc.cpu_seconds() - cpu0
    result.standin_cpu_first_s = own_cpu_seconds() - own0
    result.first_reconciles = reconciles_between(probe0, probes.read(), first)
    return result


def steady_phase(server: Any, probes: Probes, proc: Process, result: Result, args: argparse.Namespace) -> None:
    """Let the last writes drain, then a quiet window of drift reconciles: reads, writes, CPU, memory."""
    time.sleep(args.interval + 2)
    result.rss_loaded_mib = proc.rss_mib()
    before = probes.read()
    cpu1, mark = proc.cpu_seconds(), server.mark()
    time.sleep(args.window)
    steady = operator_requests(server, mark)
    after = probes.read()
    result.cpu_steady_s = proc.cpu_seconds() - cpu1
    result.steady_requests = collections.Counter(request_key(r) for r in steady)
    result.steady_reconciles = reconciles_between(before, after, steady)
    result.steady_writes = [str(r) for r in steady if r.is_write]
    result.rss_peak_mib = proc.peak_rss_mib()
    result.watched_objects = after.get("watchedObjects")


def run_once(tree: OperatorTree, args: argparse.Namespace, tmp: Path) -> Result:
    """One operator against a fresh stand-in: the whole scenario."""
    from kascade.testing import StandinApiServer

    history = max(200_000, 60 * args.cascades)  # every change of the run stays watchable (no 410 from the bench)
    with StandinApiServer(crd_paths=[tree.root / "crds"], controller_delay=0.5, history_limit=history) as server:
        seed(server)
        log_path = tmp / f"operator-{tree.root.name}.log"
        operator, probes = start_operator(tree, server, args.interval, log_path)
        proc = Process(operator.pid)
        try:

            def live() -> bool:
                if operator.poll() is not None:
                    raise SystemExit(f"the operator exited:\n{log_path.read_text()[-3000:]}")
                return probes.live()

            wait_until(live, 60, "the operator to start")
            time.sleep(1.0)
            result = first_phase(server, probes, proc, args, tree)
            steady_phase(server, probes, proc, result, args)
        finally:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.kill()
    return result


def report(trees: list[OperatorTree], results: list[Result], args: argparse.Namespace, argv: list[str]) -> None:
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; load average before the run: {args.load:.2f}"
    )
    print(f"command: python bench/operator_scale.py {' '.join(argv)}".rstrip())
    print()
    columns = [result.rows() for result in results]
    rows = [(label, *(column[i][1] for column in columns)) for i, (label, _) in enumerate(columns[0])]
    print(table(rows, ("operator_scale", *(tree.label for tree in trees)), args.markdown))
    for tree, result in zip(trees, results, strict=True):
        if result.steady_writes:
            print(f"\nwrites in steady state ({tree.label}):\n  " + "\n  ".join(result.steady_writes[:10]))
        if args.breakdown:
            per = max(result.steady_reconciles, 1)
            print()
            print(
                table(
                    result.breakdown(result.first_requests, args.cascades),
                    (f"first phase ({tree.label})", "per cascade"),
                    args.markdown,
                )
            )
            print()
            print(
                table(
                    result.breakdown(result.steady_requests, per),
                    (f"steady state ({tree.label})", "per reconcile"),
                    args.markdown,
                )
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cascades", type=int, default=200)
    parser.add_argument("--interval", type=float, default=10.0, help="KASCADE_RECONCILE_INTERVAL_SECONDS")
    parser.add_argument("--window", type=float, default=30.0, help="steady-state window in seconds")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--tree", action="append", help="an operator to run: `.` (this checkout), a git ref, a folder")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="also print requests per reconcile by verb/resource")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kascade-bench-") as tmp:
        trees = [prepare_tree(ref, Path(tmp)) for ref in args.tree or ["."]]
        results = [run_once(tree, args, Path(tmp)) for tree in trees]
    report(trees, results, args, argv)
    return 0 if not any(result.steady_writes for result in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
