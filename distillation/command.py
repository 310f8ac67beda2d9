"""The shell of `kascade distill`: progress bar, clear errors, the before/after table, the report to its Distillation."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from kascade.api.distill_settings import DistillSettings
from kascade.api.distillation import REFUSED_EXIT_CODE, TRANSIENT_EXIT_CODE
from kascade.distillation.examples import DistillDataError
from kascade.distillation.report import DistillationReportConfig, DistillationReporter, ReportError
from kascade.distillation.result import PROVENANCE, DistillResult
from kascade.distillation.run import run_distill
from kascade.runtime.engines.transformers.loading import ModelLoadError
from kascade.runtime.signals import interrupt_on_stop_signals


def run_distill_command(
    settings: DistillSettings,
    *,
    resume: bool,
    console: Console | None = None,
    report: DistillationReportConfig | None = None,
    model_uri: str | None = None,
) -> int:
    """Train and say the result; with `report`, write the run's progress and result into its Distillation.

    `model_uri`: the output as a tier's model.uri (reported as status.model); default: the output folder.
    """
    console = console or Console()
    with contextlib.ExitStack() as stack:
        reporter = stack.enter_context(DistillationReporter(report)) if report else None
        try:
            with interrupt_on_stop_signals():
                if reporter:
                    reporter.start(settings.training.steps)
                result = _train(settings, resume, console, reporter)
        except KeyboardInterrupt:  # not the run's failure: nothing final is reported, the Job may retry and resume
            console.print("stopped; run the same command again to resume from the last checkpoint")
            return 130
        except ReportError as error:
            console.print(f"[red]error:[/red] {error}; not training a student whose result could not be reported")
            return report_exit_code(error)
        except (DistillDataError, ModelLoadError, ValueError) as error:
            console.print(f"[red]error:[/red] {error}")
            _report_failure(reporter, str(error), console)
            return REFUSED_EXIT_CODE
        except Exception as error:
            _report_failure(reporter, f"{type(error).__name__}: {error}", console)
            raise
        _say_result(result, settings, console)
        if reporter:
            try:
                reporter.succeed(result, model=model_uri or str(settings.out.resolve()))
            except ReportError as error:
                console.print(
                    f"[red]error:[/red] {error}; the student is in {settings.out}, its result is not reported"
                )
                return report_exit_code(error)
    return 0


def report_exit_code(error: ReportError) -> int:
    """A Job fails at once on REFUSED_EXIT_CODE (its podFailurePolicy) and retries the pod on anything else."""
    return TRANSIENT_EXIT_CODE if error.transient else REFUSED_EXIT_CODE


def _train(
    settings: DistillSettings, resume: bool, console: Console, reporter: DistillationReporter | None
) -> DistillResult:
    columns = (
        TextColumn("distilling"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("steps", total=settings.training.steps, loss=0.0)

        def stepped(step: int, loss: float) -> None:
            progress.update(task, completed=step, loss=loss)
            if reporter:
                reporter.progress(step, loss)

        return run_distill(settings, resume=resume, say=console.print, progress=stepped)


def _report_failure(reporter: DistillationReporter | None, message: str, console: Console) -> None:
    if reporter is None:
        return
    try:
        reporter.fail(message)
    except ReportError as error:
        console.print(f"[red]error:[/red] {error}; the failure above is not reported")


def _say_result(result: DistillResult, settings: DistillSettings, console: Console) -> None:
    console.print(figures_table(result))
    gate = result.gate
    if gate.passed and gate.gain is not None:
        console.print(f"promotion gate: [green]passed[/green] (agreement {gate.gain:+.4f}, no slice worse)")
    else:
        console.print("promotion gate: [red]failed[/red]: " + "; ".join(gate.reasons))
    console.print(
        f"student written to {settings.out} (point a tier's model.uri at it); provenance in "
        f"{settings.out / PROVENANCE}; {result.train_seconds} s training, peak {result.peak_memory_mib} MiB"
    )


FIGURES = ("answer_agreement", "answer_accuracy", "token_agreement", "loss")


def figures_table(result: DistillResult) -> Table:
    table = Table(
        "held-out figure",
        "before",
        "after",
        title=f"{result.data.held_out} held-out examples; trained at {result.data.levels}",
    )
    for name in FIGURES:
        before, after = getattr(result.before, name), getattr(result.after, name)
        if before is not None or after is not None:
            table.add_row(name, _figure(before), _figure(after))
    return table


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
