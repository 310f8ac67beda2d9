"""The shell of `kascade distill`: progress bar, clear errors, the before/after table."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from kascade.distillation.examples import DistillDataError
from kascade.distillation.run import PROVENANCE, run_distill
from kascade.distillation.settings import DistillSettings
from kascade.runtime.engines.transformers.loading import ModelLoadError


def run_distill_command(settings: DistillSettings, *, resume: bool, console: Console | None = None) -> int:
    console = console or Console()
    columns = (TextColumn("distilling"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
               TimeRemainingColumn())  # fmt: skip
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("steps", total=settings.steps, loss=0.0)
            provenance = run_distill(
                settings, resume=resume, say=console.print,
                progress=lambda step, loss: progress.update(task, completed=step, loss=loss),
            )  # fmt: skip
    except (DistillDataError, ModelLoadError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    except KeyboardInterrupt:
        console.print("stopped; run the same command again to resume from the last checkpoint")
        return 130
    console.print(figures_table(provenance))
    gate = provenance["gate"]
    if gate["passed"]:
        console.print(f"promotion gate: [green]passed[/green] (agreement {gate['gain']:+.4f}, no slice worse)")
    else:
        console.print("promotion gate: [red]failed[/red]: " + "; ".join(gate["reasons"]))
    console.print(f"student written to {settings.out} (point a tier's model.uri at it); provenance in "
                  f"{settings.out / PROVENANCE}; {provenance['train_seconds']} s training, peak {provenance['peak_memory_mib']} MiB")  # fmt: skip
    return 0


def figures_table(provenance: dict) -> Table:
    before, after = provenance["before"], provenance["after"]
    table = Table("held-out figure", "before", "after", title=f"{provenance['data']['held_out']} held-out examples; "
                  f"trained at {provenance['data']['levels']}")  # fmt: skip
    for name in ("answer_agreement", "answer_accuracy", "token_agreement", "loss"):
        if name in before or name in after:
            table.add_row(name, _figure(before.get(name)), _figure(after.get(name)))
    return table


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
