"""Local mode's tiers: load or start every tier of a ModelCascade on this machine, then the router.

- engine `transformers`: the model is loaded in-process (`TransformersEngine`)
  from `model.uri`, resolved by the catalog (`pkg://`, a local folder,
  `file://`, `hf://`).
- engine `external`: `model.uri` is an OpenAI-compatible base URL; the router
  reaches it over HTTP with the API key of `apiKeySecret`.
- engine `vllm`: `vllm serve` is started as a subprocess when vLLM is
  installed (GPU machines); otherwise local mode says so and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from rich.console import Console

from kascade.api.model_uri import ModelUri
from kascade.api.modelcascade import EngineKind, ModelCascade, Task, Tier
from kascade.runtime.config import RouterConfig, judge_api_key_secret, router_config_from_cascade
from kascade.runtime.local.manifest import LocalModeError, secret_env_var
from kascade.runtime.models.files import resolve_model_uri
from kascade.runtime.serving import free_port

if TYPE_CHECKING:
    from kascade.runtime.engines.base import Engine
    from kascade.runtime.engines.transformers.loading import Task as EngineTask
    from kascade.runtime.serving import BackgroundServer

VLLM_START_TIMEOUT_SECONDS = 900.0


READY_TIMEOUT_SECONDS = 30.0


@dataclass
class LocalTiers:
    """What local mode started for the tiers, and how the router reaches each."""

    urls: dict[str, str | None] = field(default_factory=dict)  # None: in-process engine
    engines: dict[str, Engine] = field(default_factory=dict)
    api_key_envs: dict[str, str] = field(default_factory=dict)


def _hub_token(tier: Tier) -> str | None:
    ref = tier.model.hub_token_secret
    return os.environ.get(secret_env_var(ref)) if ref is not None else None


def start_tiers(
    cascade: ModelCascade, *, cache_dir: Path | None, console: Console, stack: contextlib.ExitStack
) -> LocalTiers:
    """Load or start every tier; what needs stopping is registered on `stack`."""
    tiers = LocalTiers()
    task: EngineTask = "classify" if cascade.spec.task is Task.classify else "generate"
    for tier in cascade.spec.tiers:
        if tier.engine is EngineKind.external:
            tiers.urls[tier.name] = tier.model.uri
            if tier.api_key_secret is not None:
                tiers.api_key_envs[tier.name] = secret_env_var(tier.api_key_secret)
            console.print(f"tier [bold]{tier.name}[/bold]: external OpenAI-compatible API at {tier.model.uri}")
            continue
        if tier.engine is EngineKind.vllm:
            tiers.urls[tier.name] = _start_vllm(tier, cache_dir=cache_dir, console=console, stack=stack)
            continue
        if tier.engine_args:
            console.print(f"[yellow]tier {tier.name}: engineArgs apply to vLLM only; ignored here[/yellow]")
        path = resolve_model_uri(tier.model.uri, cache_dir=cache_dir, hub_token=_hub_token(tier), console=console)
        tiers.urls[tier.name] = None
        tiers.engines[tier.name] = _load_transformers(tier, path, task, console)
        stack.callback(_close_engine, tiers.engines[tier.name])
    return tiers


def _load_transformers(tier: Tier, path: Path, task: EngineTask, console: Console) -> Engine:
    from kascade.runtime.engines.transformers import ModelLoadError, TransformersEngine
    from kascade.runtime.engines.transformers.loading import without_progress_bars

    started = time.monotonic()
    loading = f"loading tier [bold]{tier.name}[/bold] from {tier.model.uri} ({path})"
    try:
        with without_progress_bars(), console.status(loading):  # the spinner says what is happening
            engine = TransformersEngine.load(path, task=task, device="auto", served_model_name=tier.served_name)
    except ModelLoadError as exc:
        raise LocalModeError(f"tier {tier.name!r}: {exc}") from None
    console.print(f"loaded tier [bold]{tier.name}[/bold] from {tier.model.uri} in {time.monotonic() - started:.1f} s")
    return engine


def _close_engine(engine: Engine) -> None:
    with contextlib.suppress(Exception):
        asyncio.run(engine.aclose())


def _start_vllm(tier: Tier, *, cache_dir: Path | None, console: Console, stack: contextlib.ExitStack) -> str:
    """`vllm serve` in a subprocess on a free port; returns its OpenAI base URL once healthy."""
    location = tier.model.location
    if location.hf_repo_id is not None:
        model = location.hf_repo_id  # vLLM fetches from the hub itself
    else:
        model = str(resolve_model_uri(location.raw, cache_dir=cache_dir, console=console))
    executable = shutil.which("vllm") or str(Path(sys.executable).with_name("vllm"))
    port = free_port()
    command = [
        executable,
        "serve",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        tier.served_name,
        *tier.engine_args,
    ]
    log = Path(tempfile.mkstemp(prefix=f"kascade-vllm-{tier.name}-", suffix=".log")[1])
    console.print(f"tier [bold]{tier.name}[/bold]: starting {' '.join(command)} (log: {log})")
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    stack.callback(_stop_process, process)
    deadline = time.monotonic() + VLLM_START_TIMEOUT_SECONDS
    with console.status(f"waiting for vLLM (tier {tier.name}) on port {port}"):
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise LocalModeError(f"tier {tier.name!r}: vLLM exited with code {process.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code == 200:
                    return f"http://127.0.0.1:{port}/v1"
            time.sleep(1.0)
    raise LocalModeError(
        f"tier {tier.name!r}: vLLM did not become healthy in {VLLM_START_TIMEOUT_SECONDS:.0f} s; see {log}"
    )


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ensure_port_free(host: str, port: int, *, option: str = "--port") -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise LocalModeError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); another process may use it: "
                f"pass {option} with a free port"
            ) from None


def build_router_config(cascade: ModelCascade, tiers: LocalTiers) -> RouterConfig:
    router_secret = cascade.spec.router.api_key_secret
    return router_config_from_cascade(
        cascade,
        tiers.urls,
        tier_api_key_envs=tiers.api_key_envs,
        api_keys_env=secret_env_var(router_secret) if router_secret is not None else None,
        escalation_log_uri=local_escalation_log_uri(cascade),
        calibrate_in_process=True,  # one router and no operator: it moves its own thresholds
        judge_api_key_env=secret_env_var(judge_key) if (judge_key := judge_api_key_secret(cascade)) else None,
    )


def local_escalation_log_uri(cascade: ModelCascade) -> str | None:
    """Where local mode writes the escalation log: the spec's folder, file:// or s3:// (a pvc:// needs a cluster)."""
    log = cascade.spec.escalation_log
    if log is None or not log.enabled or not log.uri:
        return None
    if ModelUri.parse(log.uri).scheme == "pvc":
        raise LocalModeError(
            f"spec.escalationLog.uri {log.uri!r}: a PersistentVolumeClaim needs a cluster; "
            "in local mode give a folder, file:// or s3:// URI"
        )
    return log.uri


def client_base_url(host: str, port: int) -> str:
    """Where a client on this machine reaches the router (a wildcard bind is reached on loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass(frozen=True)
class LocalRouter:
    """Where a client on this machine reaches the local router: the API, and /metrics and /stats."""

    url: str
    metrics_url: str


@contextlib.contextmanager
def serve_cascade(
    cascade: ModelCascade,
    *,
    host: str,
    port: int,
    cache_dir: Path | None,
    console: Console,
    metrics_port: int | None = None,
) -> Iterator[LocalRouter]:
    """Start every tier and the router (its metrics on `metrics_port`, default a free one); yields where it
    answers; stops everything on exit."""
    from kascade.runtime.router import create_router_app
    from kascade.runtime.serving import BackgroundServer

    with contextlib.ExitStack() as stack:
        tiers = start_tiers(cascade, cache_dir=cache_dir, console=console, stack=stack)
        app = create_router_app(build_router_config(cascade, tiers), engines=tiers.engines)
        server: BackgroundServer = BackgroundServer(app, host=host, port=port, metrics_port=metrics_port)
        try:
            server.start()
        except (RuntimeError, TimeoutError) as exc:
            raise LocalModeError(
                f"the router could not start on {host}:{port} (metrics on port {server.metrics_port}): {exc}"
            ) from None
        stack.callback(server.stop)  # registered last, so it stops before the engines close
        assert server.metrics_port is not None  # the router's app has a metrics port
        router = LocalRouter(client_base_url(host, port), client_base_url(host, server.metrics_port))
        _wait_ready(router.url, console)
        yield router


def _wait_ready(base_url: str, console: Console) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    report: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = httpx.get(f"{base_url}/readyz", timeout=5.0)
            report = response.json()
            if response.status_code == 200:
                return
        time.sleep(0.5)
    console.print(f"[yellow]the router is up but not ready yet ({report}); requests may fail[/yellow]")
