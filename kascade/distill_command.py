"""`kascade distill`: its options are `DistillSettings`' fields (those of `Training` and `Gate` included).

Each option's help and shown default come from its field, and an option not
given is not set, so every default lives in the model alone. `--settings`
takes a whole run's settings as JSON (what the operator renders for a run's
Job); options given as well override it. The training itself is imported
only when the command runs (torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from kascade.api.distill_settings import DistillSettings, setting_field

# An option whose name is not its field's.
OPTION_OF_FIELD = {"matcher": "--match"}


def _setting(name: str, *flags: str, **extra: Any) -> Any:
    """The Typer option of the setting `name`: its field's description and default as its help."""
    _, field = setting_field(name)
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    shown = "" if default is None else f" Default: {str(default).lower() if isinstance(default, bool) else default}."
    return typer.Option(*flags, help=(field.description or "") + shown, show_default=False, **extra)


def option_name(location: tuple[int | str, ...]) -> str | None:
    """The option a validation error is about (its field's location), or None for the settings as a whole."""
    if not location or not isinstance(location[-1], str) or location[-1] in ("training", "gate"):
        return None
    name = location[-1]
    return OPTION_OF_FIELD.get(name, "--" + name.replace("_", "-"))


def _problems(error: ValidationError) -> str:
    said = []
    for problem in error.errors():
        option = option_name(problem["loc"])
        if problem["type"] == "missing" and option:
            said.append(f"{option} is required (or --settings with it)")
        else:
            said.append(f"{option}: {problem['msg']}" if option else problem["msg"])
    return "; ".join(said)


def _settings_file(value: str) -> dict[str, Any]:
    """`--settings`: a JSON object, or a file holding one."""
    try:
        text = value if value.lstrip().startswith("{") else Path(value).read_text(encoding="utf-8")
        settings = json.loads(text)
    except (OSError, json.JSONDecodeError) as error:
        raise typer.BadParameter(
            f"neither a JSON object nor a file holding one: {error}", param_hint="--settings"
        ) from None
    if not isinstance(settings, dict):
        raise typer.BadParameter("the settings must be a JSON object", param_hint="--settings")
    return settings


def distill(
    student: Annotated[str | None, _setting("student")] = None,
    data: Annotated[str | None, _setting("data")] = None,
    out: Annotated[Path | None, _setting("out")] = None,
    teacher: Annotated[str | None, _setting("teacher")] = None,
    teacher_url: Annotated[str | None, _setting("teacher_url")] = None,
    teacher_model: Annotated[str | None, _setting("teacher_model")] = None,
    teacher_top_k: Annotated[int | None, _setting("teacher_top_k")] = None,
    loss: Annotated[str | None, _setting("loss", "--loss", metavar="forwardKL|reverseKL|generalizedJSD")] = None,
    temperature: Annotated[float | None, _setting("temperature")] = None,
    alpha: Annotated[float | None, _setting("alpha")] = None,
    beta: Annotated[float | None, _setting("beta")] = None,
    on_policy_fraction: Annotated[float | None, _setting("on_policy_fraction")] = None,
    lora: Annotated[bool | None, _setting("lora", "--lora/--no-lora")] = None,
    lora_rank: Annotated[int | None, _setting("lora_rank")] = None,
    steps: Annotated[int | None, _setting("steps")] = None,
    batch_size: Annotated[int | None, _setting("batch_size")] = None,
    learning_rate: Annotated[float | None, _setting("learning_rate")] = None,
    warmup_steps: Annotated[int | None, _setting("warmup_steps")] = None,
    max_length: Annotated[int | None, _setting("max_length")] = None,
    max_new_tokens: Annotated[int | None, _setting("max_new_tokens")] = None,
    held_out: Annotated[float | None, _setting("held_out")] = None,
    eval_every: Annotated[int | None, _setting("eval_every")] = None,
    eval_generate: Annotated[int | None, _setting("eval_generate")] = None,
    matcher: Annotated[str | None, _setting("matcher", "--match", metavar="label|number|exact|semantic|judge")] = None,
    semantic_cutoff: Annotated[float | None, _setting("semantic_cutoff")] = None,
    semantic_encoder: Annotated[str | None, _setting("semantic_encoder")] = None,
    judge_url: Annotated[str | None, _setting("judge_url")] = None,
    judge_model: Annotated[str | None, _setting("judge_model")] = None,
    judge_min_probability: Annotated[float | None, _setting("judge_min_probability")] = None,
    judge_concurrency: Annotated[int | None, _setting("judge_concurrency")] = None,
    pre_route_tier: Annotated[str | None, _setting("pre_route_tier")] = None,
    pre_route_dimensions: Annotated[int | None, _setting("pre_route_dimensions")] = None,
    max_kept_skipped: Annotated[float | None, _setting("max_kept_skipped")] = None,
    confidence: Annotated[float | None, _setting("confidence")] = None,
    limit: Annotated[int | None, _setting("limit")] = None,
    seed: Annotated[int | None, _setting("seed")] = None,
    min_agreement_gain: Annotated[float | None, _setting("min_agreement_gain")] = None,
    slice_tolerance: Annotated[float | None, _setting("slice_tolerance")] = None,
    min_slice_examples: Annotated[int | None, _setting("min_slice_examples")] = None,
    settings: Annotated[
        str | None,
        typer.Option(
            metavar="JSON|FILE",
            help="A run's whole settings (a JSON object, or a file holding one), as the operator renders them for a "
            "run's Job; the options given as well override them.",
        ),
    ] = None,
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
    given = {name: value for name, value in locals().items() if name not in _NOT_SETTINGS}
    from kascade.distillation.command import run_distill_command

    base = _settings_file(settings) if settings is not None else None
    try:
        run = DistillSettings.of_options(given, base=base)
    except ValidationError as error:
        raise typer.BadParameter(_problems(error)) from None
    report = _report_config(report_to, api_server, token_file, ca_file, report_interval) if report_to else None
    raise typer.Exit(run_distill_command(run, resume=resume, report=report, model_uri=model_uri))


# The options of `distill` that are not settings of the run: how it resumes, and where it reports.
_NOT_SETTINGS = frozenset(
    {"settings", "resume", "report_to", "model_uri", "api_server", "token_file", "report_interval", "ca_file"}
)


def _report_config(
    target: str, api_server: str | None, token_file: Path | None, ca_file: Path | None, interval: float | None
) -> Any:
    """A DistillationReportConfig; the reporter's own defaults for what is not given."""
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
