"""Router overhead: Kascade's router and the LiteLLM proxy against direct calls, in one run.

One fixed-answer OpenAI-compatible upstream (`kascade.testing.fixed_upstream`)
answers every request. Three targets are measured against it, each a separate
single-worker process on loopback:

- direct:  the upstream itself;
- kascade: `kascade route --config ...`, two tiers on that upstream, tier 0
           confident enough to accept (so one upstream call per request);
- litellm: `litellm --config ...`, the small model with a fallback to the large
           one, both `openai/...` models on that upstream.

The load generator runs in its own process and is the same for every target:
`wrk` when it is installed, else a small asyncio HTTP/1.1 client in this file.
Sequential requests (one connection) give the latency; a fixed number of
connections kept busy for a fixed time gives the throughput at each
concurrency. Targets take turns within each round; medians over rounds are
printed with their min-max.

    python bench/router_overhead.py            # full run, about 9 minutes
    python bench/router_overhead.py --quick    # about 1 minute

`--pre-routing DIMS` adds `kascade-preroute`: the `kascade` router with a
hashed pre-route score of DIMS dimensions on tier 0 that keeps the bench's
prompt (so it still answers from tier 0 after one upstream call): the
difference is what scoring the prompt costs on the hot path. The footer also
gives the score's own CPU time per request, in process, at several prompt
lengths.

This file is also the entry of the upstream process and of the Python load
generator (the `_upstream` and `_load` subcommands), so that no two parts share
an event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EXPECTED_TEXT = "Hello, world."  # what FixedBehaviour() answers
CASCADE_NAME = "bench"
CLIENT_KEY = "sk-kascade-bench-not-a-secret"  # both proxies authenticate clients, as in production
MESSAGES = [{"role": "user", "content": "Say hello."}]
RESULT_MARK = "KASCADE_BENCH_RESULT "


# -- what one load run measured ------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    """One load run against one target: successful answers, errors, latency percentiles."""

    ok: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    front_cpu_ms_per_request: float | None = None  # the target's own process (router, proxy or upstream)
    upstream_cpu_ms_per_request: float | None = None
    background_cores: float | None = None  # CPU used by processes this bench did not start

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Target:
    name: str
    url: str  # the chat completions URL
    body: dict[str, Any]
    headers: dict[str, str]
    pid: int | None = None  # the process that serves it; the upstream's for `direct`
    latency: list[LoadResult] = field(default_factory=list)
    throughput: dict[int, list[LoadResult]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)  # what the correctness checks saw
    version: str | None = None  # the proxy's own report of its version


# -- processes -------------------------------------------------------------------------------


class Processes:
    """Every process the bench starts, each in its own session, all stopped on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        log.close()
        self.started.append((name, process))
        return process

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop_all(self) -> None:
        if self.started:
            say("stopping the servers")
        for _, process in reversed(self.started):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)  # its own session: the group id is its pid
        deadline = time.monotonic() + 10
        for _, process in reversed(self.started):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.started.clear()


def wait_ready(processes: Processes, name: str, process: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"{name} exited with status {process.returncode} while starting; its log ends:\n"
                f"{processes.log_tail(name)}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{name} was not ready at {url} after {timeout:g} s; its log ends:\n{processes.log_tail(name)}")


# -- CPU accounting (Linux /proc; None elsewhere) ------------------------------------------


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def machine_busy_seconds() -> float | None:
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = values
    return (user + nice + system + irq + softirq) / _TICK


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- load generators ---------------------------------------------------------------------


class WrkLoad:
    """`wrk`, one thread, with a Lua script per target that prints its numbers as JSON."""

    name = "wrk"

    def __init__(self, binary: str, script_dir: Path) -> None:
        self.binary = binary
        self.script_dir = script_dir
        version = subprocess.run([binary, "--version"], check=False, capture_output=True, text=True)
        self.version = (version.stdout + version.stderr).splitlines()[0].split(" Copyright")[0].strip()

    def _script(self, target: Target) -> Path:
        path = self.script_dir / f"{target.name}.lua"
        if not path.exists():
            headers = "".join(f'wrk.headers["{key}"] = "{value}"\n' for key, value in target.headers.items())
            path.write_text(
                'wrk.method = "POST"\n'
                f"wrk.body = [==[{json.dumps(target.body)}]==]\n"
                f'wrk.headers["Content-Type"] = "application/json"\n{headers}'
                "done = function(summary, latency, requests)\n"
                "  local e = summary.errors\n"
                f"  io.write(string.format('{RESULT_MARK}"
                '{"requests": %d, "seconds": %.6f, "status_errors": %d, "socket_errors": %d, '
                '"p50_us": %.1f, "p99_us": %.1f}\\n\', '
                "summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout, "
                "latency:percentile(50), latency:percentile(99)))\n"
                "end\n"
            )
        return path

    def run(self, target: Target, concurrency: int, seconds: float) -> LoadResult:
        argv = [
            self.binary,
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(self._script(target)),
            target.url,
        ]
        return _parse_result(subprocess.run(argv, check=False, capture_output=True, text=True), "wrk")


class PythonLoad:
    """This file's `_load` subcommand: asyncio streams, keep-alive HTTP/1.1, N connections."""

    name = "python"
    version = f"asyncio HTTP/1.1 client (Python {platform.python_version()})"

    def run(self, target: Target, concurrency: int, seconds: float) -> LoadResult:
        argv = [
            sys.executable,
            __file__,
            "_load",
            "--url",
            target.url,
            "--body",
            json.dumps(target.body),
            "--headers",
            json.dumps(target.headers),
            "--concurrency",
            str(concurrency),
            "--seconds",
            str(seconds),
        ]
        return _parse_result(
            subprocess.run(argv, check=False, capture_output=True, text=True), "the Python load generator"
        )


def _parse_result(done: subprocess.CompletedProcess[str], what: str) -> LoadResult:
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            raw = json.loads(line[len(RESULT_MARK) :])
            return LoadResult(
                ok=raw["requests"] - raw["status_errors"],
                errors=raw["status_errors"] + raw["socket_errors"],
                seconds=raw["seconds"],
                p50_ms=raw["p50_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
            )
    raise SystemExit(f"{what} printed no result (exit status {done.returncode}):\n{done.stdout}\n{done.stderr}")


def run_python_load(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float) -> None:
    """The `_load` subcommand: keep `concurrency` connections busy for `seconds`, print one JSON line."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"{head}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    counts = {"status_errors": 0, "socket_errors": 0}

    async def connection(deadline: float) -> None:
        reader = writer = None
        while time.perf_counter() < deadline:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                started = time.perf_counter()
                writer.write(request)
                response_head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", response_head)
                if length is None:
                    raise ValueError("no content-length")
                await reader.readexactly(int(length.group(1)))
                latencies.append(time.perf_counter() - started)
                if response_head[9:10] != b"2":
                    counts["status_errors"] += 1
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                counts["socket_errors"] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def main() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(connection(started + seconds) for _ in range(concurrency)))
        return time.perf_counter() - started

    elapsed = asyncio.run(main())
    ordered = sorted(latencies) or [0.0]

    def percentile_us(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    print(
        RESULT_MARK
        + json.dumps(
            {
                "requests": len(latencies),
                "seconds": elapsed,
                **counts,
                "p50_us": percentile_us(0.50),
                "p99_us": percentile_us(0.99),
            }
        )
    )


# -- the servers -------------------------------------------------------------------------


def run_upstream(port: int) -> None:
    """The `_upstream` subcommand: the fixed-answer server, alone in its process."""
    import uvicorn

    from kascade.testing.fixed_upstream import FixedBehaviour, create_fixed_upstream_app

    uvicorn.run(
        create_fixed_upstream_app(FixedBehaviour()), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


def write_router_config(
    path: Path,
    upstream: str,
    *,
    threshold: float = 0.5,
    log_dir: Path | None = None,
    shadow_rate: float | None = None,
    pre_route_dimensions: int | None = None,
) -> None:
    """Two tiers on the one upstream; its tokens have p=0.9, so tier 0 accepts at threshold 0.5, escalates at 0.95.

    `log_dir`: keep every escalation in an escalation log there (the large tier names its tokens by id).
    `shadow_rate`: online calibration's shadow sampling at that rate (accepted answers also asked of the large tier).
    `pre_route_dimensions`: a pre-route score of that size on tier 0, which keeps the bench's prompt.
    """
    import yaml

    from kascade.api.agreement import AnswerMatcher
    from kascade.api.modelcascade import Accept
    from kascade.runtime.config import EscalationLogConfig, RouterConfig, ShadowSamplingConfig, TierConfig

    config = RouterConfig(
        cascade=CASCADE_NAME,
        tiers=[
            TierConfig(
                name="small",
                served_model="small-model",
                url=f"{upstream}/v1",
                accept=Accept(method="geometricMean", threshold=threshold),
                pre_route=bench_pre_route(pre_route_dimensions) if pre_route_dimensions is not None else None,
            ),
            TierConfig(name="large", served_model="large-model", url=f"{upstream}/v1", returns_token_ids=True),
        ],
        api_keys_env="KASCADE_BENCH_CLIENT_KEYS",
        escalation_log=EscalationLogConfig(uri=str(log_dir), flush_seconds=5) if log_dir is not None else None,
        shadow_sampling=(
            ShadowSamplingConfig(rate=shadow_rate, matcher=AnswerMatcher.exact) if shadow_rate is not None else None
        ),
    )
    # Only what differs from the defaults: a baseline from an older checkout must read it too.
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_defaults=True)))
    RouterConfig.from_yaml(path)  # what `kascade route` will read must load


def bench_pre_route(dimensions: int) -> Any:
    """A fitted-size pre-route score (seeded weights in +-0.05, bias 3) that keeps the bench's prompt."""
    import random

    from kascade.api.pre_route import PreRoute
    from kascade.runtime.scoring.pre_route import PreRouteScorer

    rng = random.Random(19)
    weights = [rng.uniform(-0.05, 0.05) for _ in range(dimensions)]
    pre_route = PreRoute(
        dimensions=dimensions, weights=PreRoute.encode_weights(weights), bias=3.0, skip_below=0.5, probe_rate=0.05
    )
    scorer = PreRouteScorer(pre_route)
    if scorer.skips(scorer.probability({"messages": MESSAGES})):
        raise SystemExit("the bench's pre-route score would skip the bench's prompt")
    return pre_route


def pre_route_cpu(dimensions: int, *, repeats: int = 2000) -> str:
    """The score's CPU time per request, in process (hashed features and the logistic head), by prompt length."""
    from kascade.runtime.scoring.pre_route import PreRouteScorer

    scorer = PreRouteScorer(bench_pre_route(dimensions))
    sentence = "Explain how a binary search finds an item in a sorted list, step by step. "
    cells = []
    for chars in (len(MESSAGES[0]["content"]), 300, 1000, 4000):
        text = MESSAGES[0]["content"] if chars == len(MESSAGES[0]["content"]) else (sentence * chars)[:chars]
        body = {"messages": [{"role": "user", "content": text}]}
        timings = []
        for _ in range(5):
            started = time.process_time()
            for _ in range(repeats // 5):
                scorer.probability(body)
            timings.append((time.process_time() - started) / (repeats // 5))
        cells.append(f"{chars} chars {statistics.median(timings) * 1e3:.3f} ms")
    return f"{dimensions} dimensions, CPU ms per request (median of 5 batches): " + ", ".join(cells)


def write_litellm_config(path: Path, upstream: str) -> None:
    import yaml

    def model(name: str, served: str) -> dict[str, Any]:
        return {
            "model_name": name,
            "litellm_params": {"model": f"openai/{served}", "api_base": f"{upstream}/v1", "api_key": "none"},
        }

    path.write_text(
        yaml.safe_dump(
            {
                "model_list": [model("small", "small-model"), model("large", "large-model")],
                "router_settings": {"fallbacks": [{"small": ["large"]}]},
            }
        )
    )


def start_router(processes: Processes, name: str, python: str, config: Path) -> Target:
    """`kascade route` run by `python` (this checkout's, or another checkout's environment).

    This checkout's router gets a copy of `config` with a free metrics port of its own (the routers of one run
    would otherwise all take the default); another checkout's reads `config` as it is.
    """
    import yaml

    from kascade.runtime.serving import free_port

    port = free_port()
    if python == sys.executable:
        own = config.with_name(f"{name}.yaml")
        own.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "metrics_port": free_port()}))
        config = own
    router = processes.start(
        name,
        [python, "-m", "kascade", "route", "--config", str(config), "--port", str(port), "--host", "127.0.0.1"],
        env={"KASCADE_BENCH_CLIENT_KEYS": CLIENT_KEY},
    )
    wait_ready(processes, name, router, f"http://127.0.0.1:{port}/readyz", 60)
    return Target(
        name,
        f"http://127.0.0.1:{port}/v1/chat/completions",
        {"model": CASCADE_NAME, "messages": MESSAGES},
        {"Authorization": f"Bearer {CLIENT_KEY}"},
        pid=router.pid,
    )


def start_targets(
    processes: Processes,
    work: Path,
    litellm: str | None,
    baseline_python: str | None,
    escalation_log: bool = False,
    shadow_rate: float | None = None,
    pre_route_dimensions: int | None = None,
) -> list[Target]:
    from kascade.runtime.serving import free_port

    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    up = processes.start("upstream", [sys.executable, __file__, "_upstream", "--port", str(upstream_port)])
    wait_ready(processes, "upstream", up, f"{upstream}/health", 60)
    targets = [
        Target(
            "direct", f"{upstream}/v1/chat/completions", {"model": "small-model", "messages": MESSAGES}, {}, pid=up.pid
        )
    ]

    write_router_config(work / "router.yaml", upstream)
    targets.append(start_router(processes, "kascade", sys.executable, work / "router.yaml"))
    if baseline_python is not None:
        targets.append(start_router(processes, "kascade-baseline", baseline_python, work / "router.yaml"))
    if escalation_log:  # every request escalates; the same router with its escalation log off and on
        write_router_config(work / "escalating.yaml", upstream, threshold=0.95)
        write_router_config(work / "escalating-log.yaml", upstream, threshold=0.95, log_dir=work / "escalation-log")
        targets.append(start_router(processes, "kascade-escalating", sys.executable, work / "escalating.yaml"))
        targets.append(start_router(processes, "kascade-escalating-log", sys.executable, work / "escalating-log.yaml"))
    if shadow_rate is not None:  # the same router as "kascade", measuring agreement on a share of its requests
        write_router_config(work / "shadow.yaml", upstream, shadow_rate=shadow_rate)
        targets.append(start_router(processes, "kascade-shadow", sys.executable, work / "shadow.yaml"))
    if pre_route_dimensions is not None:  # the same router as "kascade", scoring every prompt before tier 0
        write_router_config(work / "preroute.yaml", upstream, pre_route_dimensions=pre_route_dimensions)
        targets.append(start_router(processes, "kascade-preroute", sys.executable, work / "preroute.yaml"))

    if litellm is not None:
        litellm_port = free_port()
        write_litellm_config(work / "litellm.yaml", upstream)
        proxy = processes.start(
            "litellm",
            [
                litellm,
                "--config",
                str(work / "litellm.yaml"),
                "--port",
                str(litellm_port),
                "--host",
                "127.0.0.1",
                "--num_workers",
                "1",
            ],
            # LITELLM_LOG=ERROR is LiteLLM's production advice (no access log, as the router has none);
            # the local cost map keeps it from fetching one over the network at start.
            env={"LITELLM_MASTER_KEY": CLIENT_KEY, "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        )
        wait_ready(processes, "litellm", proxy, f"http://127.0.0.1:{litellm_port}/health/liveliness", 180)
        targets.append(
            Target(
                "litellm",
                f"http://127.0.0.1:{litellm_port}/v1/chat/completions",
                {"model": "small", "messages": MESSAGES},
                {"Authorization": f"Bearer {CLIENT_KEY}"},
                pid=proxy.pid,
            )
        )
    return targets


# -- correctness -------------------------------------------------------------------------


def check_answers(target: Target) -> str:
    """One request; raise SystemExit unless the target answered the fixed text the way it should."""
    import httpx

    response = httpx.post(target.url, json=target.body, headers=target.headers, timeout=30.0)
    problems = []
    if response.status_code != 200:
        problems.append(f"status {response.status_code}: {response.text[:300]}")
    else:
        text = response.json()["choices"][0]["message"]["content"]
        if text != EXPECTED_TEXT:
            problems.append(f"answered {text!r}, not {EXPECTED_TEXT!r}")
    seen = "text ok"
    if target.name.startswith("kascade"):
        tier, escalated = response.headers.get("x-kascade-tier"), response.headers.get("x-kascade-escalated")
        expected = ("large", "true") if target.name.startswith("kascade-escalating") else ("small", "false")
        if (tier, escalated) != expected:
            problems.append(
                f"x-kascade-tier={tier!r} x-kascade-escalated={escalated!r}; tier {expected[0]!r} should answer"
            )
        seen += f", x-kascade-tier={tier}"
    if target.name == "litellm":
        group, fallbacks = (
            response.headers.get("x-litellm-model-group"),
            response.headers.get("x-litellm-attempted-fallbacks"),
        )
        if group not in (None, "small") or fallbacks not in (None, "0"):
            problems.append(f"x-litellm-model-group={group!r} attempted-fallbacks={fallbacks!r}; 'small' should answer")
        seen += f", model group {group}"
        target.version = response.headers.get("x-litellm-version")
    if problems:
        raise SystemExit(f"{target.name} did not answer correctly: {'; '.join(problems)}")
    return seen


# -- measuring ---------------------------------------------------------------------------


def measure(
    load: WrkLoad | PythonLoad,
    target: Target,
    upstream_pid: int | None,
    concurrency: int,
    seconds: float,
    started_pids: Sequence[int],
) -> LoadResult:
    """One load run, with the CPU each process spent on it."""
    before = [process_cpu_seconds(pid) for pid in started_pids]
    front_before, up_before = process_cpu_seconds(target.pid), process_cpu_seconds(upstream_pid)
    machine_before, load_before = machine_busy_seconds(), children_cpu_seconds()
    result = load.run(target, concurrency, seconds)
    after = [process_cpu_seconds(pid) for pid in started_pids]
    front_after, up_after = process_cpu_seconds(target.pid), process_cpu_seconds(upstream_pid)
    machine_after, load_after = machine_busy_seconds(), children_cpu_seconds()

    def per_request(start: float | None, end: float | None) -> float | None:
        if start is None or end is None or result.ok == 0:
            return None
        return (end - start) * 1000 / result.ok

    background = None
    if machine_before is not None and machine_after is not None and None not in before + after:
        ours = sum(a - b for a, b in zip(after, before, strict=True)) + (load_after - load_before)  # type: ignore[operator]
        background = max(0.0, (machine_after - machine_before - ours) / result.seconds)
    return LoadResult(
        **{
            **asdict(result),
            "front_cpu_ms_per_request": per_request(front_before, front_after),
            "upstream_cpu_ms_per_request": None if target.pid == upstream_pid else per_request(up_before, up_after),
            "background_cores": background,
        },
    )


def run_rounds(
    load: WrkLoad | PythonLoad, targets: list[Target], args: argparse.Namespace, started_pids: Sequence[int]
) -> None:
    upstream_pid = targets[0].pid
    say(f"warming up each target for {args.warmup:g} s (concurrency 8, then 1)")
    for target in targets:
        load.run(target, 8, args.warmup)
        load.run(target, 1, max(1.0, args.warmup / 2))
    for round_index in range(args.rounds):
        # Targets take turns, in a rotated order, so a slow spell of the machine is shared out.
        shift = round_index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            latency = measure(load, target, upstream_pid, 1, args.latency_duration, started_pids)
            target.latency.append(latency)
            say(
                f"round {round_index + 1}/{args.rounds} {target.name:8} sequential: p50 {latency.p50_ms:.2f} ms, "
                f"p99 {latency.p99_ms:.2f} ms"
            )
            for concurrency in args.concurrency:
                result = measure(load, target, upstream_pid, concurrency, args.duration, started_pids)
                target.throughput.setdefault(concurrency, []).append(result)
                say(
                    f"round {round_index + 1}/{args.rounds} {target.name:8} concurrency {concurrency:3}: "
                    f"{result.rps:8.1f} req/s, {result.errors} errors"
                )


# -- the report --------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def show(self, digits: int) -> str:
        if self.low == self.high:
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}–{self.high:.{digits}f})"


def best_throughput(target: Target) -> tuple[int, Spread, int]:
    """The concurrency whose median RPS is highest, that spread, and all errors at every concurrency."""
    errors = sum(result.errors for results in target.throughput.values() for result in results)
    concurrency, results = max(target.throughput.items(), key=lambda item: Spread.of([r.rps for r in item[1]]).median)
    return concurrency, Spread.of([r.rps for r in results]), errors


def summarize(targets: list[Target]) -> dict[str, Any]:
    direct = targets[0]
    by_name = {target.name: target for target in targets}
    summary: dict[str, Any] = {}
    for target in targets:
        concurrency, rps, errors = best_throughput(target)
        best = target.throughput[concurrency]
        row: dict[str, Any] = {
            "p50_ms": Spread.of([r.p50_ms for r in target.latency]),
            "p99_ms": Spread.of([r.p99_ms for r in target.latency]),
            "best_rps": rps,
            "best_concurrency": concurrency,
            "errors": errors,
            "front_cpu_ms": _median_of([r.front_cpu_ms_per_request for r in best]),
            "upstream_cpu_ms": _median_of([r.upstream_cpu_ms_per_request for r in best]),
            "rps_by_concurrency": {c: Spread.of([r.rps for r in results]) for c, results in target.throughput.items()},
        }
        if target is not direct:  # added latency, paired within each round
            row["added_p50_ms"] = Spread.of([t.p50_ms - d.p50_ms for t, d in zip(target.latency, direct.latency)])
            row["added_p99_ms"] = Spread.of([t.p99_ms - d.p99_ms for t, d in zip(target.latency, direct.latency)])
        summary[target.name] = row
    if "litellm" in by_name:
        litellm_rps = summary["litellm"]["best_rps"].median
        for row in summary.values():
            row["vs_litellm"] = row["best_rps"].median / litellm_rps if litellm_rps else float("inf")
    return summary


def _median_of(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def report_rows(
    targets: list[Target], summary: dict[str, Any], concurrencies: Sequence[int]
) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """The two tables as strings: the summary, and the throughput at every concurrency."""
    header = [
        "target",
        "answers",
        "p50 ms",
        "p99 ms",
        "added p50 ms",
        "added p99 ms",
        "best req/s (at c)",
        "errors",
        "CPU ms/req",
        "req/s ÷ LiteLLM's",
    ]
    rows = []
    for target in targets:
        row = summary[target.name]
        rows.append(
            [
                target.name,
                "; ".join(dict.fromkeys(target.checks)),
                row["p50_ms"].show(2),
                row["p99_ms"].show(2),
                row["added_p50_ms"].show(2) if "added_p50_ms" in row else "—",
                row["added_p99_ms"].show(2) if "added_p99_ms" in row else "—",
                f"{row['best_rps'].show(0)} (c={row['best_concurrency']})",
                str(row["errors"]),
                _cpu_cell(row),
                f"{row['vs_litellm']:.2f}×" if "vs_litellm" in row else "—",
            ]
        )
    by_concurrency_header = ["target", *(f"c={concurrency}" for concurrency in concurrencies)]
    by_concurrency = []
    for target in targets:
        cells = [target.name]
        for concurrency in concurrencies:
            results = target.throughput[concurrency]
            errors = sum(r.errors for r in results)
            cells.append(Spread.of([r.rps for r in results]).show(0) + (f" [{errors} errors]" if errors else ""))
        by_concurrency.append(cells)
    return header, rows, by_concurrency_header, by_concurrency


def verdicts(summary: dict[str, Any]) -> list[str]:
    """The router's two targets, met or not, as measured."""
    if "kascade" not in summary:
        return []
    kascade = summary["kascade"]
    added = kascade["added_p50_ms"].median
    verdict = "met" if added <= 1.0 else "NOT met"
    lines = [f"goal p50 added latency <= 1 ms: {verdict} (Kascade adds {added:.2f} ms at p50)"]
    if "vs_litellm" in kascade:
        ratio = kascade["vs_litellm"]
        lines.append(
            f"goal >= 3x LiteLLM's throughput: {'met' if ratio >= 3.0 else 'NOT met'} "
            f"(Kascade {kascade['best_rps'].median:.0f} req/s, "
            f"LiteLLM {summary['litellm']['best_rps'].median:.0f} req/s: {ratio:.2f}×)"
        )
    if "kascade-escalating-log" in summary:
        off = summary["kascade-escalating"]["added_p50_ms"].median
        on = summary["kascade-escalating-log"]["added_p50_ms"].median
        ratio = on / off if off > 0 else float("inf")
        lines.append(
            f"goal escalation log costs <= 10% more added latency: {'met' if ratio <= 1.10 else 'NOT met'} "
            f"(every request escalating: added p50 {off:.2f} ms off, {on:.2f} ms on: {ratio:.2f}×)"
        )
    if "kascade-shadow" in summary:
        shadow = summary["kascade-shadow"]["added_p50_ms"].median
        ratio = shadow / added if added > 0 else float("inf")
        lines.append(
            f"goal shadow sampling costs <= 10% more added latency: {'met' if ratio <= 1.10 else 'NOT met'} "
            f"(added p50 {added:.2f} ms without, {shadow:.2f} ms with: {ratio:.2f}×)"
        )
    if "kascade-preroute" in summary:
        routed = summary["kascade-preroute"]
        extra = routed["added_p50_ms"].median - added
        cpu = (
            f"; CPU ms/req {kascade['front_cpu_ms']:.2f} without, {routed['front_cpu_ms']:.2f} with"
            if kascade["front_cpu_ms"] is not None and routed["front_cpu_ms"] is not None
            else ""
        )
        lines.append(
            f"goal hashed pre-route adds < 0.2 ms at p50: {'met' if extra < 0.2 else 'NOT met'} "
            f"(added p50 {added:.2f} ms without, {routed['added_p50_ms'].median:.2f} ms with: {extra:+.2f} ms{cpu})"
        )
    if "kascade-baseline" in summary:
        baseline = summary["kascade-baseline"]
        lines.append(
            f"against kascade-baseline (same run): added p50 {added:.2f} vs "
            f"{baseline['added_p50_ms'].median:.2f} ms, best req/s {kascade['best_rps'].median:.0f} vs "
            f"{baseline['best_rps'].median:.0f} ({kascade['best_rps'].median / baseline['best_rps'].median:.2f}×)"
        )
    return lines


def print_report(
    targets: list[Target],
    summary: dict[str, Any],
    environment: dict[str, str],
    concurrencies: Sequence[int],
    *,
    markdown: bool,
) -> None:
    from rich.console import Console
    from rich.table import Table

    header, rows, by_concurrency_header, by_concurrency = report_rows(targets, summary, concurrencies)
    footer = [f"{key}: {value}" for key, value in environment.items()] + verdicts(summary)
    if markdown:
        for table_header, table_rows in ((header, rows), (by_concurrency_header, by_concurrency)):
            print("| " + " | ".join(table_header) + " |")
            left = 2 if table_header is header else 1  # target (and answers) read better flush left
            print("|" + "|".join("---" if i < left else "---:" for i in range(len(table_header))) + "|")
            for cells in table_rows:
                print("| " + " | ".join(cells) + " |")
            print()
        for line in footer:
            print(f"- {line}")
        return
    console = Console(width=None if sys.stdout.isatty() else 200)
    main = Table(
        title="Router overhead: non-streaming chat completions, fixed-answer upstream on loopback",
        caption="median (min–max) over rounds; added = target minus direct in the same round",
    )
    for column in header:
        main.add_column(column, justify="left" if column in ("target", "answers") else "right")
    for cells in rows:
        main.add_row(*cells)
    console.print(main)
    throughput = Table(title="Throughput (successful req/s) by concurrency")
    for column in by_concurrency_header:
        throughput.add_column(column, justify="left" if column == "target" else "right")
    for cells in by_concurrency:
        throughput.add_row(*cells)
    console.print(throughput)
    for line in footer:
        console.print(line, highlight=False)


def _cpu_cell(row: dict[str, Any]) -> str:
    if row["front_cpu_ms"] is None:
        return "n/a"
    cell = f"{row['front_cpu_ms']:.2f}"
    if row["upstream_cpu_ms"] is not None:
        cell += f" (+{row['upstream_cpu_ms']:.2f} upstream)"
    return cell


def describe_environment(load: WrkLoad | PythonLoad, targets: list[Target], args: argparse.Namespace) -> dict[str, str]:
    import importlib.metadata
    import importlib.util

    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        names = re.findall(r"(?m)^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text())
        cpu = names[0] if names else cpu
    fast = [name for name in ("uvloop", "httptools") if importlib.util.find_spec(name) is not None]
    background = [
        r.background_cores
        for t in targets
        for rs in t.throughput.values()
        for r in rs
        if r.background_cores is not None
    ]
    environment = {
        "machine": f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()} {platform.release()}",
        "python": f"{platform.python_version()}; kascade {importlib.metadata.version('kascade')}, "
        f"uvicorn {importlib.metadata.version('uvicorn')} with "
        f"{', '.join(fast) if fast else 'h11 and asyncio (no uvloop, no httptools)'} "
        "for the upstream and the router",
        "load generator": f"{load.name}: {load.version}; its own process, one thread, "
        "keep-alive connections = concurrency",
        "durations": f"{args.rounds} round(s); sequential {args.latency_duration:g} s, each concurrency "
        f"{args.duration:g} s, warm-up {args.warmup:g} s per target",
        "CPU ms/req": "CPU time of the target's own process per successful request at its best concurrency "
        "(for kascade and litellm, plus the upstream's)",
    }
    for target in targets:
        if target.name == "litellm":
            environment["litellm"] = (
                f"LiteLLM proxy {target.version or 'of unknown version'}, one worker, "
                "LITELLM_LOG=ERROR, master key set, no database"
            )
    if background:
        environment["other load"] = (
            f"processes this bench did not start used {statistics.mean(background):.2f} "
            f"cores on average (max {max(background):.2f}) during the throughput runs"
        )
    return environment


# -- command line ------------------------------------------------------------------------


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short run: 1 round, 3 s per measurement, concurrency 1,8,32 (about 1 minute)",
    )
    parser.add_argument("--rounds", type=int, help="rounds of every measurement (default 3)")
    parser.add_argument("--duration", type=float, help="seconds of each throughput run (default 10)")
    parser.add_argument("--latency-duration", type=float, help="seconds of each sequential run (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per target (default 5)")
    parser.add_argument("--concurrency", help="comma-separated in-flight request counts (default 1,8,32,64)")
    parser.add_argument(
        "--litellm",
        default=os.environ.get("KASCADE_BENCH_LITELLM") or shutil.which("litellm"),
        help="the litellm CLI (default: $KASCADE_BENCH_LITELLM, else litellm on PATH)",
    )
    parser.add_argument(
        "--kascade-baseline",
        metavar="PYTHON",
        help="also measure `PYTHON -m kascade route` (another checkout's environment, e.g. the "
        "last release) as target kascade-baseline, to compare two versions in one run",
    )
    parser.add_argument("--skip-litellm", action="store_true", help="measure direct and kascade only")
    parser.add_argument(
        "--escalation-log",
        action="store_true",
        help="also measure a router whose every request escalates, with its escalation log off and on",
    )
    parser.add_argument(
        "--shadow-sampling",
        type=float,
        metavar="RATE",
        help="also measure the router with online calibration's shadow sampling at RATE (e.g. 0.05)",
    )
    parser.add_argument(
        "--pre-routing",
        type=int,
        metavar="DIMS",
        help="also measure the router with a hashed pre-route score of DIMS dimensions on tier 0 (e.g. 4096)",
    )
    parser.add_argument(
        "--load-generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="auto: wrk when it is on PATH, else the Python one",
    )
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for docs/)")
    parser.add_argument("--json", type=Path, help="also write every raw measurement to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 3)
    args.duration = args.duration or (3.0 if quick else 10.0)
    args.latency_duration = args.latency_duration or (3.0 if quick else 10.0)
    args.warmup = args.warmup or (2.0 if quick else 5.0)
    try:
        args.concurrency = [int(part) for part in (args.concurrency or ("1,8,32" if quick else "1,8,32,64")).split(",")]
    except ValueError:
        parser.error("--concurrency takes comma-separated integers, e.g. 1,8,32,64")
    if any(c < 1 for c in args.concurrency) or args.rounds < 1:
        parser.error("--concurrency values and --rounds must be at least 1")
    if args.skip_litellm:
        args.litellm = None
    elif not args.litellm:
        parser.error(
            "no litellm CLI found: install 'litellm[proxy]' (bench/README.md says how) and put it on PATH, "
            "pass --litellm PATH, or run with --skip-litellm"
        )
    return args


def choose_load(kind: str, work: Path) -> WrkLoad | PythonLoad:
    wrk = shutil.which("wrk")
    if kind == "wrk" and wrk is None:
        raise SystemExit("--load-generator wrk: no wrk on PATH (apt-get install wrk)")
    if kind != "python" and wrk is not None:
        return WrkLoad(wrk, work)
    return PythonLoad()


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that the servers are stopped on the way out."""

    def leave(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "_upstream":
        run_upstream(int(argv[argv.index("--port") + 1]))
        return 0
    if argv and argv[0] == "_load":
        entry = argparse.ArgumentParser()
        for name in ("--url", "--body", "--headers", "--concurrency", "--seconds"):
            entry.add_argument(name, required=True)
        load_args = entry.parse_args(argv[1:])
        run_python_load(
            load_args.url,
            load_args.body.encode(),
            json.loads(load_args.headers),
            int(load_args.concurrency),
            float(load_args.seconds),
        )
        return 0

    args = parse_args(argv)
    with stop_on_sigterm(), tempfile.TemporaryDirectory(prefix="kascade-bench-") as work_dir:
        work = Path(work_dir)
        processes = Processes(work)
        try:
            say(
                "starting the upstream, the Kascade router" + ("" if args.litellm is None else " and the LiteLLM proxy")
            )
            targets = start_targets(
                processes,
                work,
                args.litellm,
                args.kascade_baseline,
                args.escalation_log,
                args.shadow_sampling,
                args.pre_routing,
            )
            load = choose_load(args.load_generator, work)
            for target in targets:
                target.checks.append(check_answers(target))
            started_pids = [process.pid for _, process in processes.started]
            run_rounds(load, targets, args, started_pids)
            for target in targets:  # still answering correctly after the load
                target.checks.append(check_answers(target))
            environment = describe_environment(load, targets, args)
            if args.pre_routing is not None:
                environment["pre-route score"] = pre_route_cpu(args.pre_routing)
        finally:
            processes.stop_all()
    summary = summarize(targets)
    print_report(targets, summary, environment, args.concurrency, markdown=args.markdown)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "environment": environment,
                    "targets": {
                        t.name: {
                            "latency": [asdict(r) for r in t.latency],
                            "throughput": {c: [asdict(r) for r in rs] for c, rs in t.throughput.items()},
                        }
                        for t in targets
                    },
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
