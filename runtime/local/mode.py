"""Local mode: `kascade up` runs a ModelCascade on one machine, with no cluster.

The same YAML the operator deploys runs here, every tier in this process where
possible, behind the same router and the same OpenAI API. The parts, one file
each: the manifest and its Secrets (`local_manifest`), the tiers and the router
(`local_tiers`), the demo requests (`local_demo`), the live ledger (`ledger_view`).

With no manifest, the embedded default (`demo.yaml` beside this module) runs:
two real pretrained models packaged on PyPI. `--demo` sends a few requests
through the official `openai` client, prints who answered and what it cost,
and exits; without it a live summary of the ledger refreshes every second
until Ctrl-C (or SIGTERM: `kill PID` stops it as cleanly).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.text import Text

from kascade.api.counters import CounterSlot
from kascade.api.modelcascade import ModelCascade
from kascade.runtime.local.demo import run_demo
from kascade.runtime.local.ledger_view import ledger_view, summary_table
from kascade.runtime.local.manifest import LocalModeError, check_runnable, load_manifest, secret_env_var
from kascade.runtime.local.tiers import LocalRouter, ensure_port_free, serve_cascade
from kascade.runtime.models.catalog import ModelNotAvailable
from kascade.runtime.signals import interrupt_on_stop_signals

# --- what the user sees ------------------------------------------------------


def fetch_stats(client: httpx.Client, metrics_url: str) -> CounterSlot | None:
    """The router's ledger (`/stats` on its metrics port), or None while it does not answer (or answers something
    else)."""
    try:
        response = client.get(f"{metrics_url}/stats", timeout=2.0)
        response.raise_for_status()
        return CounterSlot.model_validate(response.json())
    except (httpx.HTTPError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def watch(cascade: ModelCascade, router: LocalRouter, console: Console) -> None:
    """Refresh the ledger summary about once a second until Ctrl-C."""
    from rich.live import Live

    names = [tier.name for tier in cascade.spec.tiers]
    base_url = router.url
    header = Text.assemble(
        ("Kascade local mode", "bold"),
        (
            f": cascade {cascade.metadata.name!r}, OpenAI base URL {base_url}/v1, model {cascade.metadata.name!r}. "
            f"Ledger {router.metrics_url}/stats, metrics {router.metrics_url}/metrics. Ctrl-C stops.\nTry: "
        ),
        (
            (
                f"curl {base_url}/v1/chat/completions -H 'content-type: application/json' "
                f'-d \'{{"model": "{cascade.metadata.name}", "messages": [{{"role": "user", '
                f'"content": "What is the capital of France?"}}]}}\''
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
                stats = fetch_stats(client, router.metrics_url)
                live.update(ledger_view(stats, names))
                time.sleep(1.0)


def print_final_ledger(cascade: ModelCascade, router: LocalRouter, console: Console) -> None:
    with httpx.Client() as client:
        stats = fetch_stats(client, router.metrics_url)
    names = [tier.name for tier in cascade.spec.tiers]
    Console(file=console.file).print(ledger_view(stats, names, title="Cascade ledger (final)"))


# --- the command ----------------------------------------------------------------


def run_local(
    manifest: Path | None,
    port: int,
    host: str,
    demo: bool,
    cache_dir: Path | None,
    metrics_port: int | None = None,
) -> int:
    """`kascade up`: run a ModelCascade here (/metrics and /stats on `metrics_port`, default a free port);
    returns the process exit code."""
    console = Console(soft_wrap=True)  # long paths and messages stay whole in logs and pipes
    with interrupt_on_stop_signals():
        return _run_local(
            console, manifest, port=port, host=host, demo=demo, cache_dir=cache_dir, metrics_port=metrics_port
        )


def _run_demo_requests(
    cascade: ModelCascade, router: LocalRouter, console: Console, *, api_key: str, started: float
) -> None:
    """`kascade up --demo`: the demo's requests through the cascade, then its ledger and timings."""
    demo_started = time.monotonic()
    try:
        run_demo(cascade, router.url, console, api_key=api_key)
    except LocalModeError:
        raise
    except Exception as exc:  # noqa: BLE001 - openai.APIError, httpx errors: the cascade failed
        raise LocalModeError(f"a demo request failed: {type(exc).__name__}: {exc}", exit_code=1) from None
    with httpx.Client() as client:
        stats = fetch_stats(client, router.metrics_url)
    console.print()
    if stats is not None:
        console.print(summary_table(stats, [tier.name for tier in cascade.spec.tiers]))
    console.print(
        f"\ndemo requests took {time.monotonic() - demo_started:.1f} s; whole run {time.monotonic() - started:.1f} s",
        highlight=False,
    )


def _run_local(
    console: Console,
    manifest: Path | None,
    *,
    port: int,
    host: str,
    demo: bool,
    cache_dir: Path | None,
    metrics_port: int | None,
) -> int:
    try:
        cascade = load_manifest(manifest)
        check_runnable(cascade)
        ensure_port_free(host, port)
        if metrics_port is not None:
            ensure_port_free(host, metrics_port, option="--metrics-port")
        source = str(manifest) if manifest is not None else "the embedded default manifest"
        console.print(
            f"[bold]kascade up[/bold]: cascade {cascade.metadata.name!r} from {source}, "
            f"{len(cascade.spec.tiers)} tiers: "
            + " → ".join(f"{tier.name} ({tier.engine.value}, {tier.model.uri})" for tier in cascade.spec.tiers)
        )
        started = time.monotonic()
        served = serve_cascade(
            cascade, host=host, port=port, cache_dir=cache_dir, console=console, metrics_port=metrics_port
        )
        with served as router:
            try:
                console.print(
                    f"router ready at [bold]{router.url}/v1[/bold] after {time.monotonic() - started:.1f} s; "
                    f"ask for model {cascade.metadata.name!r}"
                )
                router_secret = cascade.spec.router.api_key_secret
                api_key = os.environ[secret_env_var(router_secret)].split(",")[0].strip() if router_secret else "local"
                if demo:
                    _run_demo_requests(cascade, router, console, api_key=api_key, started=started)
                else:
                    watch(cascade, router, console)  # until Ctrl-C
                return 0
            except KeyboardInterrupt:
                # Caught here, around everything that runs while the router serves: Ctrl-C may come
                # at any moment, and the final ledger is printed while the router still answers.
                console.print("\nstopping…")
                print_final_ledger(cascade, router, console)
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
