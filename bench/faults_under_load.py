"""Faults under load: what a router answers, counts and holds while its tiers and a replica fail.

Open-loop load (requests sent at a fixed rate, each on its own schedule however long the others take, so a slow
router cannot slow the load down) goes from an httpx client in this process through two real router processes
(`kascade route`, the client alternating between them) to two tiers, each a fixed-answer server in its own process
(`kascade.testing.fixed_upstream`). The small tier answers three requests in ten with low-probability tokens, so
30% escalate to the large tier in normal operation. Each phase runs the load through a lead, a fault and a
recovery window:

- steady: no fault;
- TIER killed: the tier's process gets SIGKILL (the router's connections are refused), then it starts again on its
  port; `large-killed-busy` kills it while escalated requests are in flight on it (their connections reset);
- TIER slow: the tier answers after 1.5 times the router's per-attempt timeout, then at once again;
- TIER 5xx: the tier answers 500 with an error body, then normally again;
- router restart: one router replica gets SIGTERM (it drains its requests in flight and writes its last counters),
  then starts again on its port. The client sends a request whose connection that replica refuses to the other
  replica at once (what a Service's load balancer does when the endpoint goes), and counts it as redirected;
  `router-restart-busy` does it while the large tier takes half a timeout, so escalated requests are in flight;
- overload: each tier serves a bounded number of requests at once, each in 0.1 s (two thirds busy at the normal
  rate), and the rate rises threefold during the fault. Whether the router refuses (429 with Retry-After) or
  queues depends on its admission bounds (`--max-in-flight`, `--max-queue`, `--queue-timeout`; the API's
  defaults unless given).

Reported per phase: requests sent; answered, by tier (kept under load apart); errors by status, each checked for
an OpenAI-style body and a Retry-After; requests hung past the client's deadline (the router's own deadline, from
its queue deadline, timeout and retries, plus a margin); requests lost from the counters (the routers' totals,
`/stats` of the live processes and the final status report of a stopped one, against what the client saw:
requests, failed, answered by each tier, rejected, kept under load); the routers' RSS; latency
median and max during the fault; and the recovery time after the fault ends (until every request is answered
normally: status 200, within one attempt's timeout, no tier error in its trail, the usual tier mix).

    python bench/faults_under_load.py            # full run, about 5 minutes
    python bench/faults_under_load.py --quick    # about 1 minute
    python bench/faults_under_load.py --markdown --json run.json

This file is also the entry of the tier processes and of the status sink that takes the routers' counter reports
(the `_tier` and `_sink` subcommands).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from router_overhead import Processes, say, stop_on_sigterm

CASCADE_NAME = "faults"
NAMESPACE = "bench"
CLIENT_KEY = "sk-kascade-bench-not-a-secret"
CLIENT_KEYS_ENV = "KASCADE_BENCH_CLIENT_KEYS"
MESSAGES = [{"role": "user", "content": "Say hello."}]
TIERS = ("small", "large")
UNSURE_IN_TEN = 3  # of every ten requests the small tier answers, this many with tokens it does not accept
NORMAL_SMALL_SHARE = 1 - UNSURE_IN_TEN / 10
SHARE_TOLERANCE = 0.1
DEADLINE_MARGIN_SECONDS = 1.0
FAILED_STATUS = 500  # what a tier answers while it is told to fail
REPLICAS = ("router-a", "router-b")
STOPPED_REPLICA = REPLICAS[0]  # the replica a restart phase stops
OVERLOAD_SERVICE_SECONDS = 0.1  # how long a tier takes to answer in the overload phase


# -- the tier processes and the status sink --------------------------------------------------------


def create_tier_app(unsure_in_ten: int) -> Any:
    """A fixed-answer tier whose behaviour `POST /control` changes while it runs.

    Requests are counted as they arrive: request n gets the unsure tokens (p=0.3) when n % 10 < unsure_in_ten,
    else the confident ones (p=0.9). `POST /control` sets the whole behaviour, what it leaves out back to normal:
    `delay_seconds` before each answer, `fail_status` to answer instead, and `capacity`, the requests served at
    once (the others wait their turn, as in a model server's own queue, also after their caller has left).
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from kascade.testing.fixed_upstream import FixedBehaviour, create_fixed_upstream_app

    confident, unsure = FixedBehaviour(token_prob=0.9), FixedBehaviour(token_prob=0.3)
    confident_app, unsure_app = create_fixed_upstream_app(confident), create_fixed_upstream_app(unsure)
    arrived = 0
    serving: asyncio.Semaphore | None = None

    async def control(request: Request) -> JSONResponse:
        nonlocal serving
        if request.method == "POST":
            settings = await request.json()
            for behaviour in (confident, unsure):
                behaviour.delay_seconds = float(settings.get("delay_seconds", 0.0))
                behaviour.fail_status = settings.get("fail_status")
            capacity = settings.get("capacity")
            serving = asyncio.Semaphore(capacity) if capacity else None
        return JSONResponse({"requests": arrived, "delay_seconds": confident.delay_seconds})

    control_app = Starlette(routes=[Route("/control", control, methods=["GET", "POST"])])

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal arrived
        if scope["type"] != "http" or scope["path"] == "/control":
            await control_app(scope, receive, send)
            return
        if not scope["path"].endswith("/completions"):
            await confident_app(scope, receive, send)
            return
        chosen = unsure_app if arrived % 10 < unsure_in_ten else confident_app
        arrived += 1
        if serving is None:
            await chosen(scope, receive, send)
            return
        async with serving:
            await chosen(scope, receive, send)

    return app


def create_status_sink_app() -> Any:
    """Takes the routers' counter reports (merge patches on the cascade's status) and serves the last of each slot."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    slots: dict[str, Any] = {}

    async def take(request: Request) -> JSONResponse:
        body = await request.json()
        slots.update(body["status"]["replicaCounters"])
        return JSONResponse({"status": {}})

    async def read(request: Request) -> JSONResponse:
        return JSONResponse(slots)

    return Starlette(routes=[Route("/apis/{rest:path}", take, methods=["PATCH"]), Route("/slots", read)])


def serve(app: Any, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- the processes the bench starts ----------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    rate: float  # requests per second
    lead_seconds: float
    fault_seconds: float
    recovery_seconds: float
    timeout_seconds: float  # the router's per-attempt timeout
    retries: int
    backoff_seconds: float
    max_in_flight: int  # admission control: per tier, per router replica
    max_queue: int
    queue_timeout_seconds: float
    on_escalation_full: str
    overload_factor: float  # the overload phase's rate, times `rate`

    @property
    def router_deadline(self) -> float:
        """The longest a request can take in the router: at every tier it waits its queue's deadline, then every
        attempt times out, with the backoffs between them."""
        per_tier = (
            self.queue_timeout_seconds
            + (self.retries + 1) * self.timeout_seconds
            + sum(self.backoff_seconds * 2**attempt for attempt in range(self.retries))
        )
        return len(TIERS) * per_tier

    @property
    def overload_capacity(self) -> int:
        """The requests each tier serves at once in the overload phase: two thirds busy at `rate`, each taking
        OVERLOAD_SERVICE_SECONDS."""
        return math.ceil(1.5 * self.rate * OVERLOAD_SERVICE_SECONDS)

    @property
    def client_deadline(self) -> float:
        return self.router_deadline + DEADLINE_MARGIN_SECONDS


@dataclass
class Server:
    """One process on a fixed port; restarting it starts a new process (a new log) on the same port."""

    name: str
    port: int
    argv: list[str]
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int | None = None  # a router's /metrics and /stats
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, processes: Processes, timeout: float = 60.0) -> None:
        self.starts += 1
        self.process = processes.start(f"{self.name}-{self.starts}", self.argv, env=self.env)
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise SystemExit(
                        f"{self.name} exited with status {self.process.returncode} while starting; its log ends:\n"
                        f"{processes.log_tail(f'{self.name}-{self.starts}')}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.url + self.ready_path)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise SystemExit(f"{self.name} was not ready after {timeout:g} s")

    async def stop(self, sig: signal.Signals) -> None:
        """Send `sig` to the process's group and wait until it has exited."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        await asyncio.to_thread(self.process.wait)


def tier_server(name: str, port: int) -> Server:
    unsure = UNSURE_IN_TEN if name == TIERS[0] else 0
    argv = [sys.executable, __file__, "_tier", "--port", str(port), "--unsure-in-ten", str(unsure)]
    return Server(name, port, argv, "/health")


def write_router_config(
    path: Path, tiers: dict[str, Server], sink: Server, settings: Settings, metrics_port: int
) -> None:
    """Two tiers (small accepts p=0.9 at geometric mean 0.5, declines p=0.3); counters reported to the sink."""
    import yaml

    from kascade.api.admission import OnEscalationFull
    from kascade.api.modelcascade import Accept
    from kascade.runtime.cluster_status.report import StatusReportConfig
    from kascade.runtime.config import RouterConfig, TierConfig

    bounds = {"max_in_flight": settings.max_in_flight, "max_queue": settings.max_queue}
    config = RouterConfig(
        cascade=CASCADE_NAME,
        metrics_port=metrics_port,
        tiers=[
            TierConfig(
                name="small",
                served_model="small-model",
                url=f"{tiers['small'].url}/v1",
                accept=Accept(method="geometricMean", threshold=0.5),
                **bounds,
            ),
            TierConfig(name="large", served_model="large-model", url=f"{tiers['large'].url}/v1", **bounds),
        ],
        queue_timeout_seconds=settings.queue_timeout_seconds,
        on_escalation_full=OnEscalationFull(settings.on_escalation_full),
        timeout_seconds=settings.timeout_seconds,
        retries=settings.retries,
        retry_backoff_seconds=settings.backoff_seconds,
        api_keys_env=CLIENT_KEYS_ENV,
        status_report=StatusReportConfig(
            namespace=NAMESPACE,
            name=CASCADE_NAME,
            api_server=sink.url,
            token_file=str(path.parent / "no-token"),
            ca_file=None,
            interval_seconds=5.0,
        ),
    )
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_none=True)))
    RouterConfig.from_yaml(path)  # what `kascade route` will read must load


def router_server(name: str, work: Path, tiers: dict[str, Server], sink: Server, settings: Settings) -> Server:
    """A `kascade route` process with a config of its own (its metrics port)."""
    from kascade.runtime.serving import free_port

    port, metrics_port, config = free_port(), free_port(), work / f"{name}.yaml"
    write_router_config(config, tiers, sink, settings, metrics_port)
    argv = [
        sys.executable,
        "-m",
        "kascade",
        "route",
        "--config",
        str(config),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    ]
    env = {CLIENT_KEYS_ENV: CLIENT_KEY, "POD_NAME": name}
    return Server(name, port, argv, "/readyz", env=env, metrics_port=metrics_port)


# -- the load client --------------------------------------------------------------------------------


@dataclass
class Sent:
    """One client request and what came of it."""

    sent_at: float  # seconds since the phase began, on the schedule
    replica: str
    outcome: str = "pending"  # answered | error | hung | transport
    status: int | None = None
    latency: float | None = None
    tier: str | None = None
    trail: str = ""
    clear_body: bool = False  # an error's body is OpenAI-style: error.message and error.type
    retry_after: bool = False
    kept_under_load: bool = False  # the small tier's declined answer, kept because the large tier was full
    redirected: bool = False  # refused by one replica, sent to the other
    detail: str = ""


def is_openai_error(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and bool(error.get("message")) and isinstance(error.get("type"), str)


class LoadClient:
    """Sends one request every 1/rate seconds, alternating replicas, each with the client's own deadline."""

    def __init__(self, routers: list[Server], deadline: float, rate: float) -> None:
        self.routers = routers
        self.rate = rate
        self.deadline = deadline
        limits = httpx.Limits(max_connections=4000, max_keepalive_connections=512)
        self.clients = {
            router.name: httpx.AsyncClient(base_url=router.url, timeout=None, limits=limits) for router in routers
        }

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()

    async def run(self, stop: asyncio.Event, started: float) -> list[Sent]:
        """Send at `self.rate` from `started` (monotonic) until `stop` is set; wait for every answer; return them all.

        The rate may change while it runs (an overload): each request is due 1/rate after the one before.
        """
        sent: list[Sent] = []
        tasks: list[asyncio.Task[None]] = []
        index = 0
        due = started
        while not stop.is_set():
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            record = Sent(sent_at=due - started, replica=self.routers[index % len(self.routers)].name)
            sent.append(record)
            tasks.append(asyncio.create_task(self._send(record, index, due)))
            index += 1
            due += 1 / self.rate
        await asyncio.gather(*tasks)
        return sent

    async def _send(self, record: Sent, index: int, due: float) -> None:
        """Latency is counted from `due`, the request's place on the schedule, so a late send counts against it."""
        order = [self.routers[(index + step) % len(self.routers)].name for step in range(len(self.routers))]
        body = {"model": CASCADE_NAME, "messages": MESSAGES}
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        try:
            async with asyncio.timeout(self.deadline):
                for attempt, replica in enumerate(order):
                    try:
                        response = await self.clients[replica].post("/v1/chat/completions", json=body, headers=headers)
                        break
                    except httpx.ConnectError:  # nothing was sent: the next replica takes it
                        if attempt == len(order) - 1:
                            raise
                        record.redirected, record.replica = True, order[attempt + 1]
        except TimeoutError:
            record.outcome, record.latency = "hung", time.monotonic() - due
            return
        except httpx.HTTPError as error:
            record.outcome, record.latency = "transport", time.monotonic() - due
            record.detail = f"{type(error).__name__}({error}) {record.replica} sent at {record.sent_at:.2f} s"
            return
        record.latency = time.monotonic() - due
        record.status = response.status_code
        record.tier = response.headers.get("x-kascade-tier")
        record.trail = response.headers.get("x-kascade-trail", "")
        if response.status_code == 200:
            record.outcome = "answered"
            record.kept_under_load = response.headers.get("x-kascade-kept-under-load") == "true"
            return
        record.outcome = "error"
        record.retry_after = "retry-after" in response.headers
        try:
            record.clear_body = is_openai_error(response.json())
        except ValueError:
            record.detail = response.text[:200]


# -- counters and memory ---------------------------------------------------------------------------


async def counter_totals(client: httpx.AsyncClient, routers: list[Server], sink: Server) -> dict[str, Any]:
    """Every router process's absolute counters by process id: the live ones' /stats, the stopped ones' last report."""
    from kascade.api.counters import CounterSlot

    slots = {
        pid: CounterSlot.model_validate(slot) for pid, slot in (await client.get(sink.url + "/slots")).json().items()
    }
    for router in routers:
        slot = CounterSlot.model_validate((await client.get(f"http://127.0.0.1:{router.metrics_port}/stats")).json())
        assert slot.process_id is not None
        slots[slot.process_id] = slot
    return slots


def counted_since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """requests, failed, answeredBy.TIER, rejected (429) and keptUnderLoad counted by all router processes
    between two `counter_totals`."""
    totals: Counter[str] = Counter()
    for pid, slot in after.items():
        earlier = before.get(pid)
        totals["requests"] += slot.requests - (earlier.requests if earlier else 0)
        totals["failed"] += slot.failed - (earlier.failed if earlier else 0)
        totals["rejected"] += sum(slot.rejected.values()) - (sum(earlier.rejected.values()) if earlier else 0)
        kept = sum(slot.kept_under_load.values()) - (sum(earlier.kept_under_load.values()) if earlier else 0)
        totals["keptUnderLoad"] += kept
        for tier in TIERS:
            was = earlier.answered_by.get(tier, 0) if earlier else 0
            totals[f"answeredBy.{tier}"] += slot.answered_by.get(tier, 0) - was
    return dict(totals)


def client_counts(sent: list[Sent]) -> dict[str, int]:
    """The same figures as the client saw them: every request that reached a router (a hung one included)."""
    reached = [record for record in sent if record.outcome != "transport"]
    counts = {
        "requests": len(reached),
        "failed": sum(record.outcome != "answered" for record in reached),
        "rejected": sum(record.status == 429 for record in reached),
        "keptUnderLoad": sum(record.kept_under_load for record in reached),
    }
    for tier in TIERS:
        counts[f"answeredBy.{tier}"] = sum(record.outcome == "answered" and record.tier == tier for record in sent)
    return counts


def rss_megabytes(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def sample_rss(routers: list[Server], samples: list[float], stop: asyncio.Event) -> None:
    """The largest router RSS every 0.2 s until `stop`."""
    while not stop.is_set():
        values = [rss_megabytes(router.process.pid) for router in routers if router.process is not None]
        known = [value for value in values if value is not None]
        if known:
            samples.append(max(known))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


# -- the phases --------------------------------------------------------------------------------------


@dataclass
class Bench:
    processes: Processes
    tiers: dict[str, Server]
    routers: list[Server]
    sink: Server
    settings: Settings
    control: httpx.AsyncClient
    load: LoadClient
    phase_started: float = 0.0  # monotonic
    stopped_replica_at: float | None = None  # seconds into the phase when a router replica got SIGTERM

    async def tell(self, tier: str, **behaviour: Any) -> None:
        response = await self.control.post(self.tiers[tier].url + "/control", json=behaviour)
        response.raise_for_status()


@dataclass(frozen=True)
class Phase:
    """A fault: `begin` starts it; `end` (after the fault's duration, or at once when `timed` is False) ends it.

    `prepare` runs before the phase's load begins, `restore` after its last answer.
    """

    name: str
    begin: Callable[[Bench], Awaitable[None]] | None = None
    end: Callable[[Bench], Awaitable[None]] | None = None
    timed: bool = True
    prepare: Callable[[Bench], Awaitable[None]] | None = None
    restore: Callable[[Bench], Awaitable[None]] | None = None


BUSY_ANSWER_TIMEOUTS = 0.5  # a busy tier answers in this share of the router's timeout


async def make_busy(bench: Bench, tier: str) -> None:
    """The tier answers in half a timeout from now on; half a timeout later, requests are in flight on it."""
    wait = BUSY_ANSWER_TIMEOUTS * bench.settings.timeout_seconds
    await bench.tell(tier, delay_seconds=wait)
    await asyncio.sleep(wait)


def killed(tier: str, *, busy: bool = False) -> Phase:
    """`busy`: the tier holds requests in flight (`make_busy`) when it is killed: their connections are reset."""

    async def begin(bench: Bench) -> None:
        if busy:
            await make_busy(bench, tier)
        await bench.tiers[tier].stop(signal.SIGKILL)

    async def end(bench: Bench) -> None:
        await bench.tiers[tier].start(bench.processes)

    return Phase(f"{tier} killed" + (" (busy)" if busy else ""), begin, end)


def slow(tier: str) -> Phase:
    async def begin(bench: Bench) -> None:
        await bench.tell(tier, delay_seconds=1.5 * bench.settings.timeout_seconds)

    async def end(bench: Bench) -> None:
        await bench.tell(tier, delay_seconds=0.0)

    return Phase(f"{tier} slow", begin, end)


def failing(tier: str) -> Phase:
    async def begin(bench: Bench) -> None:
        await bench.tell(tier, fail_status=FAILED_STATUS)

    async def end(bench: Bench) -> None:
        await bench.tell(tier, fail_status=None)

    return Phase(f"{tier} 5xx", begin, end)


def router_restart(*, busy: bool) -> Phase:
    """`busy`: the large tier is busy (`make_busy`) when the replica gets SIGTERM, so escalated requests are in
    flight on the replica when it stops."""

    async def begin(bench: Bench) -> None:
        if busy:
            await make_busy(bench, "large")
        bench.stopped_replica_at = time.monotonic() - bench.phase_started
        assert bench.routers[0].name == STOPPED_REPLICA
        await bench.routers[0].stop(signal.SIGTERM)

    async def end(bench: Bench) -> None:
        await bench.routers[0].start(bench.processes)
        if busy:
            await bench.tell("large", delay_seconds=0.0)

    return Phase("router restart" + (" (busy)" if busy else ""), begin, end, timed=False)


def overload() -> Phase:
    """Both tiers serve a bounded number of requests at once (`Settings.overload_capacity`, each in
    OVERLOAD_SERVICE_SECONDS), and the rate rises by the overload factor during the fault."""

    async def prepare(bench: Bench) -> None:
        for tier in TIERS:
            await bench.tell(tier, delay_seconds=OVERLOAD_SERVICE_SECONDS, capacity=bench.settings.overload_capacity)

    async def begin(bench: Bench) -> None:
        bench.load.rate = bench.settings.rate * bench.settings.overload_factor

    async def end(bench: Bench) -> None:
        bench.load.rate = bench.settings.rate

    async def restore(bench: Bench) -> None:
        for tier in TIERS:
            await bench.tell(tier)

    return Phase("overload", begin, end, prepare=prepare, restore=restore)


PHASES: dict[str, Phase] = {
    "steady": Phase("steady"),
    **{f"{tier}-killed": killed(tier) for tier in TIERS},
    "large-killed-busy": killed("large", busy=True),
    **{f"{tier}-slow": slow(tier) for tier in TIERS},
    **{f"{tier}-5xx": failing(tier) for tier in TIERS},
    "router-restart": router_restart(busy=False),
    "router-restart-busy": router_restart(busy=True),
    "overload": overload(),
}


@dataclass
class PhaseResult:
    name: str
    fault_began: float | None
    fault_ended: float | None
    sent: list[Sent]
    router_counted: dict[str, int]
    client_counted: dict[str, int]
    rss_mb: list[float]
    rss_end_mb: float | None
    stopped_replica_at: float | None  # when a router replica got SIGTERM, seconds into the phase


async def run_fault(bench: Bench, phase: Phase, started: float) -> tuple[float | None, float | None]:
    """The fault's beginning and end, in seconds since `started`; None without a fault."""
    if phase.begin is None:
        return None, None
    began = time.monotonic() - started
    await phase.begin(bench)
    if phase.timed:
        await asyncio.sleep(bench.settings.fault_seconds)
    if phase.end is not None:
        await phase.end(bench)
    return began, time.monotonic() - started


async def run_phase(bench: Bench, phase: Phase) -> PhaseResult:
    """Load through the lead, the fault and the recovery window; then the counters, once every answer is in."""
    settings = bench.settings
    if phase.prepare is not None:
        await phase.prepare(bench)
    before = await counter_totals(bench.control, bench.routers, bench.sink)
    stop_load, stop_rss = asyncio.Event(), asyncio.Event()
    rss: list[float] = []
    sampler = asyncio.create_task(sample_rss(bench.routers, rss, stop_rss))
    started = bench.phase_started = time.monotonic()
    bench.stopped_replica_at = None
    running = asyncio.create_task(bench.load.run(stop_load, started))
    await asyncio.sleep(settings.lead_seconds)
    fault_began, fault_ended = await run_fault(bench, phase, started)
    await asyncio.sleep(settings.recovery_seconds)
    stop_load.set()
    sent = await running
    await asyncio.sleep(0.5)  # a request its client gave up on is counted when the router sees the disconnect
    after = await counter_totals(bench.control, bench.routers, bench.sink)
    stop_rss.set()
    await sampler
    if phase.restore is not None:
        await phase.restore(bench)
    return PhaseResult(
        phase.name,
        fault_began,
        fault_ended,
        sent,
        counted_since(before, after),
        client_counts(sent),
        rss,
        rss[-1] if rss else None,
        bench.stopped_replica_at,
    )


# -- reading a phase ---------------------------------------------------------------------------------


def is_normal(record: Sent, timeout: float) -> bool:
    return (
        record.outcome == "answered"
        and record.latency is not None
        and record.latency < timeout
        and "=error" not in record.trail
    )


def recovery_seconds(result: PhaseResult, timeout: float) -> float | None:
    """From the fault's end to the first request after which every request is answered normally, in the usual mix.

    None when the phase ended before that (or the requests after the last abnormal one are off the usual mix).
    """
    if result.fault_ended is None:
        return 0.0
    after = [record for record in result.sent if record.sent_at >= result.fault_ended]
    first_normal = len(after)
    while first_normal > 0 and is_normal(after[first_normal - 1], timeout):
        first_normal -= 1
    rest = after[first_normal:]
    if not rest:
        return None
    share = sum(record.tier == TIERS[0] for record in rest) / len(rest)
    if len(rest) >= 20 and abs(share - NORMAL_SMALL_SHARE) > SHARE_TOLERANCE:
        return None
    return max(0.0, rest[0].sent_at - result.fault_ended)


def in_flight_at(result: PhaseResult, replica: str) -> dict[str, int] | None:
    """The requests `replica` held when it got SIGTERM, by outcome; None when no replica was stopped."""
    moment = result.stopped_replica_at
    if moment is None:
        return None
    held = [
        record
        for record in result.sent
        if record.replica == replica
        and record.sent_at <= moment
        and (record.latency is None or record.sent_at + record.latency > moment)
    ]
    return dict(Counter(record.outcome for record in held))


def summarize(result: PhaseResult, settings: Settings) -> dict[str, Any]:
    sent = result.sent
    statuses = Counter(record.status for record in sent if record.outcome == "error")
    unclear = sum(record.outcome == "error" and not record.clear_body for record in sent)
    if result.fault_began is not None and result.fault_ended is not None:
        window = [r for r in sent if result.fault_began <= r.sent_at < result.fault_ended]
    else:
        window = sent
    latencies = [r.latency * 1000 for r in window if r.latency is not None and r.outcome not in ("hung", "transport")]
    lost = {
        key: result.router_counted.get(key, 0) - count
        for key, count in result.client_counted.items()
        if result.router_counted.get(key, 0) != count
    }
    return {
        "phase": result.name,
        "sent": len(sent),
        "answered": {tier: sum(r.outcome == "answered" and r.tier == tier for r in sent) for tier in TIERS},
        "errors": {str(status): count for status, count in sorted(statuses.items())},
        "errors_without_openai_body": unclear,
        "errors_with_retry_after": sum(r.outcome == "error" and r.retry_after for r in sent),
        "kept_under_load": sum(r.kept_under_load for r in sent),
        "hung": sum(r.outcome == "hung" for r in sent),
        "transport_errors": sum(r.outcome == "transport" for r in sent),
        "transport_details": sorted({r.detail for r in sent if r.outcome == "transport"})[:5],
        "redirected": sum(r.redirected for r in sent),
        "lost": lost,
        "router_counted": result.router_counted,
        "client_counted": result.client_counted,
        "fault_seconds": (
            None
            if result.fault_began is None or result.fault_ended is None
            else round(result.fault_ended - result.fault_began, 2)
        ),
        "fault_p50_ms": statistics.median(latencies) if latencies else None,
        "fault_max_ms": max(latencies) if latencies else None,
        "rss_max_mb": max(result.rss_mb) if result.rss_mb else None,
        "rss_end_mb": result.rss_end_mb,
        "recovery_seconds": recovery_seconds(result, settings.timeout_seconds),
        "in_flight_at_sigterm": in_flight_at(result, STOPPED_REPLICA),
    }


# -- the report --------------------------------------------------------------------------------------


HEADER = [
    "phase",
    "sent",
    "answered small / large",
    "errors (status: n)",
    "with Retry-After",
    "no OpenAI body",
    "hung",
    "transport (redirected)",
    "lost",
    "fault s",
    "p50 / max ms in fault",
    "router RSS MB end (max)",
    "recovered after s",
]


def _cell(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def report_row(row: dict[str, Any]) -> list[str]:
    errors = ", ".join(f"{status}: {count}" for status, count in row["errors"].items()) or "0"
    lost = ", ".join(f"{key} {diff:+d}" for key, diff in row["lost"].items()) or "0"
    recovery = row["recovery_seconds"]
    return [
        row["phase"],
        str(row["sent"]),
        " / ".join(str(row["answered"][tier]) for tier in TIERS)
        + (f" ({row['kept_under_load']} kept)" if row["kept_under_load"] else ""),
        errors,
        str(row["errors_with_retry_after"]),
        str(row["errors_without_openai_body"]),
        str(row["hung"]),
        f"{row['transport_errors']} ({row['redirected']})",
        lost,
        _cell(row["fault_seconds"], 1),
        f"{_cell(row['fault_p50_ms'], 1)} / {_cell(row['fault_max_ms'], 0)}",
        f"{_cell(row['rss_end_mb'], 0)} ({_cell(row['rss_max_mb'], 0)})",
        "not recovered" if recovery is None else f"{recovery:.2f}",
    ]


def phase_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What the table has no column for: what a stopped replica held, what broke at the transport."""
    notes = []
    for row in rows:
        held = row["in_flight_at_sigterm"]
        if held is not None:
            outcomes = ", ".join(f"{count} {outcome}" for outcome, count in sorted(held.items())) or "none"
            notes.append(f"{row['phase']}: in flight on {STOPPED_REPLICA} at its SIGTERM: {outcomes}")
        if row["transport_details"]:
            notes.append(f"{row['phase']}: transport errors: {'; '.join(row['transport_details'])}")
    return notes


def print_report(rows: list[dict[str, Any]], environment: dict[str, str], *, markdown: bool) -> None:
    cells = [report_row(row) for row in rows]
    footer = phase_notes(rows) + [f"{key}: {value}" for key, value in environment.items()]
    if markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|---|" + "|".join("---:" for _ in HEADER[1:]) + "|")
        for row in cells:
            print("| " + " | ".join(row) + " |")
        print()
        for line in footer:
            print(f"- {line}")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 220)
    table = Table(title="Faults under load: two routers, two fixed-answer tiers, open-loop load")
    for column in HEADER:
        table.add_column(column, justify="left" if column == "phase" else "right")
    for row in cells:
        table.add_row(*row)
    console.print(table)
    for line in footer:
        console.print(line, highlight=False)


def describe_environment(
    settings: Settings, args: argparse.Namespace, rss_after_warmup: float | None
) -> dict[str, str]:
    import importlib.metadata

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "machine": f"{os.cpu_count()} CPU cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, kascade {importlib.metadata.version('kascade')}",
        "load average at the end": "unknown" if load is None else " / ".join(f"{value:.2f}" for value in load),
        "load": f"open loop, {settings.rate:g} requests/s, httpx in the bench's process, alternating between two "
        "`kascade route` processes; a request refused by one replica is sent to the other",
        "phases": f"lead {settings.lead_seconds:g} s, fault {settings.fault_seconds:g} s (a restart: as long as it "
        f"takes), recovery window {settings.recovery_seconds:g} s; latencies are of requests sent during the fault",
        "router": f"timeout {settings.timeout_seconds:g} s per attempt, {settings.retries} retry, backoff "
        f"{settings.backoff_seconds:g} s; admission per tier and replica: {settings.max_in_flight} in flight, "
        f"{settings.max_queue} queued for {settings.queue_timeout_seconds:g} s at most, onEscalationFull "
        f"{settings.on_escalation_full}: deadline {settings.router_deadline:g} s; the client's deadline "
        f"{settings.client_deadline:g} s (hung = past it)",
        "tiers": f"small answers {UNSURE_IN_TEN} in 10 requests unsure (escalated); slow = "
        f"{1.5 * settings.timeout_seconds:g} s; 5xx = {FAILED_STATUS} with an error body; killed = SIGKILL; "
        f"overload = each tier serves {settings.overload_capacity} at once in {OVERLOAD_SERVICE_SECONDS:g} s "
        f"(capacity {settings.overload_capacity / OVERLOAD_SERVICE_SECONDS:g} requests/s) through the phase, and "
        f"the rate is {settings.overload_factor:g}x during the fault",
        "lost": "the routers' counted requests, failed, answeredBy, rejected (429) and keptUnderLoad (/stats, and "
        "a stopped process's last status report) minus the client's; 0 = none lost",
        "recovered": "seconds from the fault's end (the tier healthy again, the replica ready) until every request "
        "is 200 within one attempt's timeout with no tier error, in the usual tier mix",
        "router RSS after warm-up": _cell(rss_after_warmup, 0) + " MB",
        "command": "python bench/faults_under_load.py " + " ".join(args.argv),
    }


# -- command line ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from kascade.api.admission import (
        DEFAULT_MAX_IN_FLIGHT,
        DEFAULT_MAX_QUEUE,
        DEFAULT_QUEUE_TIMEOUT_SECONDS,
        OnEscalationFull,
    )

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short phases at a lower rate (about 1 minute)")
    parser.add_argument("--rate", type=float, help="requests per second (default 100; --quick 40)")
    parser.add_argument("--lead", type=float, help="seconds of load before each fault (default 3; --quick 1)")
    parser.add_argument("--fault", type=float, help="seconds each timed fault lasts (default 10; --quick 2)")
    parser.add_argument("--recovery", type=float, help="seconds of load after each fault (default 10; --quick 3)")
    parser.add_argument("--timeout", type=float, default=1.0, help="the router's per-attempt timeout (default 1 s)")
    parser.add_argument("--phases", help=f"comma-separated, in order (default all: {','.join(PHASES)})")
    parser.add_argument(
        "--overload-factor", type=float, default=3.0, help="the overload phase's rate, times --rate (default 3)"
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        help=f"admission: calls in flight per tier per router (default the API's, {DEFAULT_MAX_IN_FLIGHT})",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help=f"admission: requests queued per tier per router (default the API's, {DEFAULT_MAX_QUEUE})",
    )
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=DEFAULT_QUEUE_TIMEOUT_SECONDS,
        help=f"admission: a request's wait in a queue at most (default the API's, {DEFAULT_QUEUE_TIMEOUT_SECONDS:g} s)",
    )
    parser.add_argument(
        "--on-escalation-full",
        choices=[policy.value for policy in OnEscalationFull],
        default=OnEscalationFull.wait.value,
        help="admission: what an escalated request that finds the large tier full gets (default wait)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for docs/)")
    parser.add_argument("--json", type=Path, help="also write every phase's figures to this file")
    parser.add_argument("--logs", type=Path, help="keep the configs and every process's log in this folder")
    args = parser.parse_args(argv)
    args.argv = list(argv)
    quick = args.quick
    args.rate = args.rate or (40.0 if quick else 100.0)
    args.lead = args.lead if args.lead is not None else (1.0 if quick else 3.0)
    args.fault = args.fault if args.fault is not None else (2.0 if quick else 10.0)
    args.recovery = args.recovery if args.recovery is not None else (3.0 if quick else 10.0)
    args.phases = (args.phases or ",".join(PHASES)).split(",")
    unknown = [name for name in args.phases if name not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {unknown}; the phases are {', '.join(PHASES)}")
    return args


def settings_of(args: argparse.Namespace) -> Settings:
    return Settings(
        rate=args.rate,
        lead_seconds=args.lead,
        fault_seconds=args.fault,
        recovery_seconds=args.recovery,
        timeout_seconds=args.timeout,
        retries=1,
        backoff_seconds=0.05,
        max_in_flight=args.max_in_flight,
        max_queue=args.max_queue,
        queue_timeout_seconds=args.queue_timeout,
        on_escalation_full=args.on_escalation_full,
        overload_factor=args.overload_factor,
    )


async def run_bench(
    args: argparse.Namespace, work: Path, processes: Processes
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    from kascade.runtime.serving import free_port

    settings = settings_of(args)
    tiers = {name: tier_server(name, free_port()) for name in TIERS}
    sink_port = free_port()
    sink = Server("sink", sink_port, [sys.executable, __file__, "_sink", "--port", str(sink_port)], "/slots")
    routers = [router_server(name, work, tiers, sink, settings) for name in REPLICAS]
    say("starting two tiers, the status sink and two routers")
    await asyncio.gather(*(server.start(processes) for server in (*tiers.values(), sink)))
    await asyncio.gather(*(router.start(processes) for router in routers))
    load = LoadClient(routers, settings.client_deadline, settings.rate)
    async with httpx.AsyncClient(timeout=10.0) as control:
        bench = Bench(processes, tiers, routers, sink, settings, control, load)
        try:
            say("warming up")
            warm = asyncio.Event()
            warming = asyncio.create_task(load.run(warm, time.monotonic()))
            await asyncio.sleep(2.0)
            warm.set()
            await warming
            rss_after_warmup = max(rss_megabytes(router.process.pid) or 0.0 for router in routers if router.process)
            rows = []
            for name in args.phases:
                say(f"phase {name}")
                rows.append(summarize(await run_phase(bench, PHASES[name]), settings))
        finally:
            await load.close()
    return rows, describe_environment(settings, args, rss_after_warmup)


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] in ("_tier", "_sink"):
        entry = argparse.ArgumentParser()
        entry.add_argument("--port", type=int, required=True)
        entry.add_argument("--unsure-in-ten", type=int, default=0)
        sub = entry.parse_args(argv[1:])
        serve(create_tier_app(sub.unsure_in_ten) if argv[0] == "_tier" else create_status_sink_app(), sub.port)
        return 0
    args = parse_args(argv)
    with stop_on_sigterm(), tempfile.TemporaryDirectory(prefix="kascade-faults-") as work_dir:
        work = args.logs or Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
        processes = Processes(work)
        try:
            rows, environment = asyncio.run(run_bench(args, work, processes))
        finally:
            processes.stop_all()
    print_report(rows, environment, markdown=args.markdown)
    if args.json is not None:
        args.json.write_text(json.dumps({"environment": environment, "phases": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
