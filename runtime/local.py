"""Local mode: `kascade up` runs a ModelCascade on one machine, with no cluster.

The same YAML the operator deploys runs here, every tier in this process where
possible, behind the same router and the same OpenAI API:

- engine `transformers`: the model is loaded in-process (`TransformersEngine`)
  from `model.uri`, resolved by the catalog (`pkg://`, a local folder,
  `file://`, `hf://`).
- engine `external`: `model.uri` is an OpenAI-compatible base URL; the router
  reaches it over HTTP with the API key of `apiKeySecret`.
- engine `vllm`: `vllm serve` is started as a subprocess when vLLM is
  installed (GPU machines); otherwise local mode says so and stops.

Kubernetes Secrets do not exist here. A Secret key reference `{name, key}` is
read from the environment variable `<NAME>_<KEY>`, upper-cased, every
character that is not a letter or digit turned into `_`: Secret `openai-key`,
key `api-key` → `OPENAI_KEY_API_KEY`.

With no manifest, the embedded default (`demo.yaml` beside this module) runs:
two real pretrained models packaged on PyPI. `--demo` sends a few requests
through the official `openai` client, prints who answered and what it cost,
and exits; without it a live summary of the ledger refreshes every second
until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml
from kascade.api.modelcascade import EngineKind, ModelCascade, SecretKeyRef, Task, Tier
from kascade.runtime.catalog import ModelNotAvailable, resolve_model_uri
from kascade.runtime.config import RouterConfig, router_config_from_cascade
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from kascade.runtime.engines.base import Engine
    from kascade.runtime.serving import BackgroundServer

DEMO_MANIFEST = "demo.yaml"
VLLM_START_TIMEOUT_SECONDS = 900.0
READY_TIMEOUT_SECONDS = 30.0

# Varied on purpose: some the small model knows cold, some it should hand on.
# The demo manifest's threshold was tuned on these (docs/local-mode.md shows the scores).
DEMO_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Say hello in French.",
    "Write a Python function that returns the square of a number.",
    "Who wrote the novel Pride and Prejudice?",
    "What is the time complexity of binary search?",
    "What does HTTP status code 404 mean?",
    "What is the capital of Japan?",
    "What is 2 + 2?",
)
DEMO_CLASSIFY_INPUTS: tuple[str, ...] = (
    "I loved this movie, it was wonderful.",
    "The service was terrible and slow.",
    "It was fine, nothing special.",
    "Absolutely the best purchase I have made this year.",
)
DEMO_MAX_TOKENS = 48


class LocalModeError(Exception):
    """Local mode cannot run this manifest; `message` tells the user what to change."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


# --- the manifest -----------------------------------------------------------


def load_manifest(path: Path | None) -> ModelCascade:
    """Read and validate a ModelCascade; None reads the embedded default (demo.yaml)."""
    if path is None:
        text = importlib.resources.files("kascade.runtime").joinpath(DEMO_MANIFEST).read_text(encoding="utf-8")
        source = "the embedded default manifest"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise LocalModeError(f"no manifest at {path}") from None
        except OSError as exc:
            raise LocalModeError(f"cannot read {path}: {exc.strerror or exc}") from None
        source = str(path)
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise LocalModeError(f"{source} is not valid YAML:\n{exc}") from None
    cascades = [doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == "ModelCascade"]
    if len(cascades) != 1:
        found = "none" if not cascades else str(len(cascades))
        raise LocalModeError(
            f"{source} must hold exactly one document of kind ModelCascade (found {found}); "
            "see examples/local-demo.yaml"
        )
    try:
        return ModelCascade.model_validate(cascades[0])
    except ValidationError as exc:
        raise LocalModeError(f"{source} is not a valid ModelCascade:\n{format_validation_error(exc)}") from None


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, the field path as it is written in YAML: `spec.tiers[1].accept: ...`."""
    lines = []
    for problem in error.errors():
        path = ""
        for part in problem["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"  {path or '(document)'}: {message}")
    return "\n".join(lines)


def secret_env_var(ref: SecretKeyRef) -> str:
    """The environment variable that stands in for a Secret key in local mode."""
    return re.sub(r"[^A-Za-z0-9]", "_", f"{ref.name}_{ref.key}").upper()


def _read_secret(ref: SecretKeyRef, what: str) -> str:
    variable = secret_env_var(ref)
    value = os.environ.get(variable, "").strip()
    if not value:
        raise LocalModeError(
            f"{what} comes from Secret {ref.name!r} key {ref.key!r}. Local mode has no Secrets: "
            f"set the environment variable {variable} (e.g. `export {variable}=...`) and run again."
        )
    return value


# --- the tiers ----------------------------------------------------------------


@dataclass
class LocalTiers:
    """What local mode started for the tiers, and how the router reaches each."""

    urls: dict[str, str | None] = field(default_factory=dict)  # None: in-process engine
    engines: dict[str, Engine] = field(default_factory=dict)
    api_key_envs: dict[str, str] = field(default_factory=dict)


def check_runnable(cascade: ModelCascade) -> None:
    """Every check that needs no model loaded, so a manifest fails in a second, not after a download."""
    for tier in cascade.spec.tiers:
        if tier.engine is EngineKind.vllm and importlib.util.find_spec("vllm") is None:
            raise LocalModeError(
                f"tier {tier.name!r} uses engine vllm, but vLLM is not installed here (it ships CUDA-only "
                "wheels for GPU machines). In local mode use `engine: transformers` for this tier, "
                "which runs the same model in-process on CPU or GPU."
            )
        if tier.engine is EngineKind.external and tier.api_key_secret is not None:
            _read_secret(tier.api_key_secret, f"tier {tier.name!r}'s API key")
        if tier.engine is not EngineKind.external and tier.model.uri.startswith(("pvc://", "s3://")):
            raise LocalModeError(
                f"tier {tier.name!r}: {tier.model.uri} lives in the cluster (pvc:// and s3:// are mounted "
                "or fetched by the operator). In local mode point model.uri at a folder on this machine, "
                "hf://org/name, or a packaged model such as pkg://smollm2-135m-instruct."
            )
    if cascade.spec.router.api_key_secret is not None:
        _read_secret(cascade.spec.router.api_key_secret, "the router's client API key")


def _served_name(tier: Tier) -> str:
    return tier.model.served_name or tier.name


def _hub_token(tier: Tier) -> str | None:
    ref = tier.model.hub_token_secret
    return os.environ.get(secret_env_var(ref)) if ref is not None else None


def start_tiers(
    cascade: ModelCascade, *, cache_dir: Path | None, console: Console, stack: contextlib.ExitStack
) -> LocalTiers:
    """Load or start every tier; what needs stopping is registered on `stack`."""
    tiers = LocalTiers()
    task = "classify" if cascade.spec.task is Task.classify else "generate"
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


def _load_transformers(tier: Tier, path: Path, task: str, console: Console) -> Engine:
    from kascade.runtime.engines.transformers_engine import (
        ModelLoadError,
        TransformersEngine,
    )
    from transformers.utils import logging as hf_logging

    started = time.monotonic()
    hf_logging.disable_progress_bar()  # the spinner below says what is happening
    try:
        with console.status(f"loading tier [bold]{tier.name}[/bold] from {tier.model.uri} ({path})"):
            engine = TransformersEngine.load(path, task=task, device="auto", served_model_name=_served_name(tier))
    except ModelLoadError as exc:
        raise LocalModeError(f"tier {tier.name!r}: {exc}") from None
    finally:
        hf_logging.enable_progress_bar()
    console.print(f"loaded tier [bold]{tier.name}[/bold] from {tier.model.uri} in {time.monotonic() - started:.1f} s")
    return engine


def _close_engine(engine: Engine) -> None:
    with contextlib.suppress(Exception):
        asyncio.run(engine.aclose())


def _start_vllm(tier: Tier, *, cache_dir: Path | None, console: Console, stack: contextlib.ExitStack) -> str:
    """`vllm serve` in a subprocess on a free port; returns its OpenAI base URL once healthy."""
    uri = tier.model.uri
    if uri.startswith("hf://"):
        model = uri[len("hf://"):].partition("@")[0]  # vLLM fetches from the hub itself
    else:
        model = str(resolve_model_uri(uri, cache_dir=cache_dir, console=console))
    executable = shutil.which("vllm") or str(Path(sys.executable).with_name("vllm"))
    port = _free_port()
    command = [executable, "serve", model, "--host", "127.0.0.1", "--port", str(port),
               "--served-model-name", _served_name(tier), *tier.engine_args]  # fmt: skip
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
    raise LocalModeError(f"tier {tier.name!r}: vLLM did not become healthy in {VLLM_START_TIMEOUT_SECONDS:.0f} s; see {log}")


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ensure_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise LocalModeError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); another process may use it: "
                "pass --port with a free port"
            ) from None


def build_router_config(cascade: ModelCascade, tiers: LocalTiers) -> RouterConfig:
    router_secret = cascade.spec.router.api_key_secret
    return router_config_from_cascade(
        cascade,
        tiers.urls,
        tier_api_key_envs=tiers.api_key_envs,
        api_keys_env=secret_env_var(router_secret) if router_secret is not None else None,
    )


def client_base_url(host: str, port: int) -> str:
    """Where a client on this machine reaches the router (a wildcard bind is reached on loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def serve_cascade(
    cascade: ModelCascade, *, host: str, port: int, cache_dir: Path | None, console: Console
) -> Iterator[str]:
    """Start every tier and the router; yields the router's base URL; stops everything on exit."""
    from kascade.runtime.router import create_router_app
    from kascade.runtime.serving import BackgroundServer

    with contextlib.ExitStack() as stack:
        tiers = start_tiers(cascade, cache_dir=cache_dir, console=console, stack=stack)
        app = create_router_app(build_router_config(cascade, tiers), engines=tiers.engines)
        server: BackgroundServer = BackgroundServer(app, host=host, port=port)
        try:
            server.start()
        except (RuntimeError, TimeoutError) as exc:
            raise LocalModeError(f"the router could not start on {host}:{port}: {exc}") from None
        stack.callback(server.stop)  # registered last, so it stops before the engines close
        base_url = client_base_url(host, port)
        _wait_ready(base_url, console)
        yield base_url


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


# --- what the user sees ------------------------------------------------------


def _money(value: float, currency: str) -> str:
    return f"{value:.6f} {currency}"


def summary_table(stats: Mapping[str, Any], tier_names: Sequence[str], *, title: str = "Cascade ledger") -> Table:
    """The ledger as a table: traffic per tier, escalation rate, what it cost and saved."""
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    requests = int(stats.get("requests", 0))
    escalations = int(stats.get("escalations", 0))
    answered = stats.get("answeredBy", {})
    currency = stats.get("currency", "USD")
    table.add_row("requests", f"{requests}" + (f"  ({stats.get('failed', 0)} failed)" if stats.get("failed") else ""))
    for name in tier_names:
        count = int(answered.get(name, 0))
        share = f"{100.0 * count / requests:.0f}%" if requests else "-"
        tier = stats.get("tiers", {}).get(name, {})
        calls = int(tier.get("calls", 0))
        latency = f", {tier.get('latencySecondsSum', 0.0) / calls:.2f} s/call" if calls else ""
        table.add_row(f"answered by {name}", f"{count} ({share}); {calls} calls{latency}")
    rate = f"{100.0 * escalations / requests:.0f}%" if requests else "-"
    table.add_row("escalated", f"{escalations} ({rate})")
    cost = stats.get("cost", {})
    table.add_row("actual cost", _money(float(cost.get("actual", 0.0)), currency))
    table.add_row("all-largest baseline", _money(float(cost.get("baseline", 0.0)), currency))
    table.add_row(
        "saved",
        f"{_money(float(cost.get('saved', 0.0)), currency)} ({float(cost.get('savedPercent', 0.0)):.1f}%)",
    )
    return table


def _fetch_stats(client: httpx.Client, base_url: str) -> dict[str, Any] | None:
    try:
        response = client.get(f"{base_url}/stats", timeout=2.0)
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError):
        return None


def watch(cascade: ModelCascade, base_url: str, console: Console) -> None:
    """Refresh the ledger summary about once a second until Ctrl-C."""
    from rich.live import Live

    names = [tier.name for tier in cascade.spec.tiers]
    header = Text.assemble(
        ("Kascade local mode", "bold"),
        (
            f": cascade {cascade.metadata.name!r}, OpenAI base URL {base_url}/v1, model {cascade.metadata.name!r}. "
            "Ctrl-C stops.\nTry: "
        ),
        (
            (
                f"curl {base_url}/v1/chat/completions -H 'content-type: application/json' "
                f"-d '{{\"model\": \"{cascade.metadata.name}\", \"messages\": [{{\"role\": \"user\", "
                f"\"content\": \"What is the capital of France?\"}}]}}'"
            ),
            "cyan",
        ),
        "\n",
    )
    screen = Console(file=console.file)  # wraps long lines, where the main console keeps them whole
    screen.print(header)
    with httpx.Client() as client:
        # Transient: the live table goes when stopped; the caller prints the final one once.
        with Live(Text("waiting for the ledger…"), console=screen, refresh_per_second=4, transient=True) as live:
            while True:
                stats = _fetch_stats(client, base_url)
                live.update(_ledger_view(stats, names))
                time.sleep(1.0)


def print_final_ledger(cascade: ModelCascade, base_url: str, console: Console) -> None:
    with httpx.Client() as client:
        stats = _fetch_stats(client, base_url)
    names = [tier.name for tier in cascade.spec.tiers]
    Console(file=console.file).print(_ledger_view(stats, names, title="Cascade ledger (final)"))


def _ledger_view(stats: Mapping[str, Any] | None, names: Sequence[str], *, title: str = "Cascade ledger") -> Any:
    return summary_table(stats, names, title=title) if stats is not None else Text("the router is not answering /stats")


@dataclass(frozen=True)
class DemoAnswer:
    prompt: str
    tier: str
    confidence: str  # the x-kascade-trail header: each tier tried and its score
    escalated: bool
    answer: str
    seconds: float


def run_demo(
    cascade: ModelCascade, base_url: str, console: Console, *, api_key: str = "local"
) -> list[DemoAnswer]:
    """Send the demo requests through the official openai client; print each as it comes back."""
    count = len(DEMO_CLASSIFY_INPUTS if cascade.spec.task is Task.classify else DEMO_PROMPTS)
    console.print(
        f"\n[bold]Demo[/bold]: {count} requests to {base_url}/v1 with the openai client. "
        "Scores: each tier tried and its confidence (x-kascade-trail); the last tier always answers and is not scored.\n"
    )
    if cascade.spec.task is Task.classify:
        return _demo_classify(cascade, base_url, console, api_key)
    try:
        from openai import OpenAI
    except ImportError:
        raise LocalModeError("the demo talks to the cascade with the official openai client: pip install openai") from None

    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=600.0)
    answers = []
    for number, prompt in enumerate(DEMO_PROMPTS, start=1):
        started = time.monotonic()
        if cascade.spec.task is Task.completion:
            raw = client.completions.with_raw_response.create(
                model=cascade.metadata.name, prompt=prompt, max_tokens=DEMO_MAX_TOKENS, temperature=0
            )
            text = raw.parse().choices[0].text
        else:
            raw = client.chat.completions.with_raw_response.create(
                model=cascade.metadata.name,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=DEMO_MAX_TOKENS,
                temperature=0,
            )
            text = raw.parse().choices[0].message.content or ""
        answer = DemoAnswer(
            prompt=prompt,
            tier=raw.headers.get("x-kascade-tier", "?"),
            confidence=raw.headers.get("x-kascade-trail", "-"),
            escalated=raw.headers.get("x-kascade-escalated") == "true",
            answer=" ".join(text.split()),
            seconds=time.monotonic() - started,
        )
        answers.append(answer)
        _print_demo_answer(console, number, answer)
    return answers


def _demo_classify(cascade: ModelCascade, base_url: str, console: Console, api_key: str) -> list[DemoAnswer]:
    answers = []
    with httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=600.0) as client:
        for number, text in enumerate(DEMO_CLASSIFY_INPUTS, start=1):
            started = time.monotonic()
            response = client.post(f"{base_url}/classify", json={"model": cascade.metadata.name, "input": text})
            response.raise_for_status()
            label = response.json()["data"][0].get("label", "?")
            answer = DemoAnswer(
                prompt=text,
                tier=response.headers.get("x-kascade-tier", "?"),
                confidence=response.headers.get("x-kascade-trail", "-"),
                escalated=response.headers.get("x-kascade-escalated") == "true",
                answer=str(label),
                seconds=time.monotonic() - started,
            )
            answers.append(answer)
            _print_demo_answer(console, number, answer)
    return answers


def _print_demo_answer(console: Console, number: int, answer: DemoAnswer) -> None:
    short = answer.answer if len(answer.answer) <= 110 else answer.answer[:107] + "..."
    verdict = "[yellow]escalated[/yellow]" if answer.escalated else "[green]accepted[/green]"
    console.print(f"[bold]{number}.[/bold] {answer.prompt}")
    console.print(
        f"   → tier [bold]{answer.tier}[/bold]  {verdict}  scores {answer.confidence}  "
        f"({answer.seconds:.1f} s)",
        highlight=False,
    )
    console.print(f"   [dim]{short}[/dim]", highlight=False)


# --- the command ----------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill PID` stops local mode as cleanly as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_local(
    manifest: Path | None, port: int, host: str, demo: bool, cache_dir: Path | None
) -> int:
    """`kascade up`: run a ModelCascade here; returns the process exit code."""
    console = Console(soft_wrap=True)  # long paths and messages stay whole in logs and pipes
    with _sigterm_as_interrupt():
        return _run_local(console, manifest, port=port, host=host, demo=demo, cache_dir=cache_dir)


def _run_local(
    console: Console, manifest: Path | None, *, port: int, host: str, demo: bool, cache_dir: Path | None
) -> int:
    try:
        cascade = load_manifest(manifest)
        check_runnable(cascade)
        ensure_port_free(host, port)
        source = str(manifest) if manifest is not None else "the embedded default manifest"
        console.print(
            f"[bold]kascade up[/bold]: cascade {cascade.metadata.name!r} from {source}, "
            f"{len(cascade.spec.tiers)} tiers: "
            + " → ".join(f"{tier.name} ({tier.engine.value}, {tier.model.uri})" for tier in cascade.spec.tiers)
        )
        started = time.monotonic()
        with serve_cascade(cascade, host=host, port=port, cache_dir=cache_dir, console=console) as base_url:
            try:
                console.print(
                    f"router ready at [bold]{base_url}/v1[/bold] after {time.monotonic() - started:.1f} s; "
                    f"ask for model {cascade.metadata.name!r}"
                )
                router_secret = cascade.spec.router.api_key_secret
                api_key = os.environ[secret_env_var(router_secret)].split(",")[0].strip() if router_secret else "local"
                if not demo:
                    watch(cascade, base_url, console)  # until Ctrl-C
                else:
                    demo_started = time.monotonic()
                    try:
                        run_demo(cascade, base_url, console, api_key=api_key)
                    except LocalModeError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - openai.APIError, httpx errors: the cascade failed
                        raise LocalModeError(f"a demo request failed: {type(exc).__name__}: {exc}", exit_code=1) from None
                    with httpx.Client() as client:
                        stats = _fetch_stats(client, base_url)
                    console.print()
                    if stats is not None:
                        console.print(summary_table(stats, [tier.name for tier in cascade.spec.tiers]))
                    console.print(
                        f"\ndemo requests took {time.monotonic() - demo_started:.1f} s; "
                        f"whole run {time.monotonic() - started:.1f} s",
                        highlight=False,
                    )
                    return 0
            except KeyboardInterrupt:
                # Caught here, around everything that runs while the router serves: Ctrl-C may come
                # at any moment, and the final ledger is printed while the router still answers.
                console.print("\nstopping…")
                print_final_ledger(cascade, base_url, console)
                return 0
    except LocalModeError as exc:
        console.print(f"[red]kascade up:[/red] {exc.message}", highlight=False)
        return exc.exit_code
    except ModelNotAvailable as exc:
        console.print(f"[red]kascade up:[/red] {exc.message}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("\ninterrupted; nothing half-written was kept")
        return 130
