"""Local mode's view of the ledger: who answered, what escalated, what it cost and what it saved.

It renders the router's `/stats` answer, read as the `CounterSlot` it is (the
same type the router writes into the cluster's status), with rich. Pure: local
mode (`local.py`) fetches it.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from kascade.api.counters import CounterSlot

DEFAULT_TITLE = "Cascade ledger"


def summary_table(slot: CounterSlot, tier_names: Sequence[str], *, title: str = DEFAULT_TITLE) -> Table:
    """The ledger as a table: traffic per tier, escalation rate, what it cost and saved."""
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    requests = slot.requests
    currency = slot.currency or "USD"
    table.add_row("requests", f"{requests}" + (f"  ({slot.failed} failed)" if slot.failed else ""))
    for name in tier_names:
        count = slot.answered_by.get(name, 0)
        share = f"{100.0 * count / requests:.0f}%" if requests else "-"
        tier = slot.tiers.get(name)
        calls = tier.calls if tier is not None else 0
        latency = f", {tier.latency_seconds_sum / calls:.2f} s/call" if tier is not None and calls else ""
        table.add_row(f"answered by {name}", f"{count} ({share}); {calls} calls{latency}")
    rate = f"{100.0 * slot.escalations / requests:.0f}%" if requests else "-"
    table.add_row("escalated", f"{slot.escalations} ({rate})")
    cost = slot.cost
    for name, skipped in slot.routed_past.items():  # pre-routing: skipped before they were asked
        table.add_row(f"routed past {name}", f"{skipped} ({100.0 * skipped / requests:.0f}%)" if requests else "-")
    if slot.routed_past:
        probes = f"; probes {slot.probe_calls}, {_money(slot.probe_cost, currency)}" if slot.probe_calls else ""
        table.add_row("skipping saved", f"~{_money(slot.routed_past_saved, currency)} (estimated){probes}")
    if slot.judge_calls or slot.judge_skipped:  # matcher judge: paid apart, in actual
        unjudged = f"{slot.judge_failures} without a verdict, {slot.judge_skipped} skipped"
        table.add_row("judge calls", f"{slot.judge_calls} ({unjudged}); {_money(slot.judge_cost, currency)}")
    table.add_row("actual cost", _money(cost.actual, currency))
    table.add_row("all-largest baseline", _money(cost.baseline, currency))
    table.add_row("saved", f"{_money(cost.saved, currency)} ({cost.saved_percent:.1f}%)")
    return table


def ledger_view(slot: CounterSlot | None, tier_names: Sequence[str], *, title: str = DEFAULT_TITLE) -> Table | Text:
    """The table, or a line saying why there is none."""
    if slot is None:
        return Text("the router is not answering /stats")
    return summary_table(slot, tier_names, title=title)


def _money(value: float, currency: str) -> str:
    # Six decimals: a few local requests cost fractions of a cent.
    return f"{value:.6f} {currency}"
