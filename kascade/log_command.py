"""`kascade log stats|show`: look inside an escalation log (a folder, file:// or s3:// URL)."""

from __future__ import annotations

from itertools import islice

import typer
from rich.console import Console
from rich.table import Table

log_app = typer.Typer(
    help="Look inside an escalation log: counts, time range, escalation reasons, records.", no_args_is_help=True
)


def _records(uri: str):  # an iterator of EscalationRecord
    from kascade.runtime.escalation.segments import SegmentStore

    store = SegmentStore(uri)
    if not store.segments():
        raise typer.BadParameter(f"no escalation-log segments under {uri}", param_hint="URI")
    return store, store.records()


@log_app.command()
def stats(uri: str = typer.Argument(help="The log: a folder, file:// or s3://bucket/prefix.")) -> None:
    """Counts, time range, who answered, why the first tiers declined, how much teacher signal is kept."""
    from kascade.runtime.escalation.view import log_stats

    console = Console()
    store, records = _records(uri)
    summary = log_stats(records)
    table = Table(title=f"escalation log {uri} ({len(store.segments())} segments)", show_header=False)
    table.add_row("records", str(summary.records))
    table.add_row("from", str(summary.first))
    table.add_row("to", str(summary.last))
    table.add_row("kinds", ", ".join(f"{k} {n}" for k, n in summary.by_kind.most_common()))
    table.add_row("endpoints", ", ".join(f"{k} {n}" for k, n in summary.by_endpoint.most_common()))
    table.add_row("answered by", ", ".join(f"{k} {n}" for k, n in summary.answered_by.most_common()))
    table.add_row("with token ids", f"{summary.with_token_ids} ({summary.teacher_tokens} teacher tokens)")
    table.add_row("redacted", str(summary.redacted))
    console.print(table)
    reasons = Table("escalation reason", "records", title="why the first tiers declined")
    for reason, count in summary.reasons.most_common():
        reasons.add_row(reason, str(count))
    console.print(reasons)


@log_app.command()
def show(
    uri: str = typer.Argument(help="The log: a folder, file:// or s3://bucket/prefix."),
    limit: int = typer.Option(5, help="How many records (oldest first)."),
) -> None:
    """A few records: when, the prompt, what the first tiers said and scored, what the answering tier said."""
    from kascade.runtime.escalation.view import decided_on, kind_note, prompt_of

    console = Console()
    _, records = _records(uri)
    for record in islice(records, limit):
        console.rule(f"{record.recorded_at:%Y-%m-%d %H:%M:%S} {record.endpoint} {record.kind.value} {record.id[:8]}")
        if kind_note(record):
            console.print(kind_note(record), highlight=False)
        console.print(f"[bold]prompt[/bold]: {prompt_of(record)}", markup=True, highlight=False)
        for declined in record.declined:
            console.print(
                f"[yellow]{declined.model.tier}[/yellow] ({decided_on(declined)}): {declined.text}", highlight=False
            )
        tokens = f", {len(record.tokens.token_ids)} token ids" if record.tokens is not None else ", no token ids"
        console.print(
            f"[green]{record.answered_by.tier}[/green] ({record.answered_by.served_model}{tokens}): {record.answer}",
            highlight=False,
        )
