"""Local mode's ledger table reads the typed slot the router serves on /stats."""

from __future__ import annotations

import io

from rich.console import Console
from rich.text import Text

from kascade.api.counters import CounterSlot
from kascade.api.modelcascade import Price
from kascade.runtime.ledger import Ledger, RequestOutcome, TierCall
from kascade.runtime.local.ledger_view import ledger_view, summary_table

PRICES = {"small": Price(input_per_million=1.0), "large": Price(input_per_million=10.0)}


def rendered(table: object) -> str:
    console = Console(file=io.StringIO(), width=200)
    console.print(table)
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    return "\n".join(" ".join(line.split()) for line in lines)  # columns padded: one space between words


def test_the_table_shows_traffic_escalations_and_savings() -> None:
    ledger = Ledger(PRICES, process_id="p")
    ledger.record(RequestOutcome("small", (TierCall("small", 1000, 0, 0.5, ok=True),), escalated=False))
    ledger.record(RequestOutcome(None, (TierCall("small", 0, 0, 0.1, ok=False),), escalated=False))
    # What local mode fetches: the /stats JSON, read back as the slot it is.
    slot = CounterSlot.model_validate({**ledger.snapshot(), "cascade": "demo"})
    text = rendered(summary_table(slot, ["small", "large"]))
    assert "requests 2 (1 failed)" in text
    assert "answered by small 1 (50%); 2 calls, 0.30 s/call" in text
    assert "answered by large 0 (0%); 0 calls" in text
    assert "escalated 0 (0%)" in text
    assert "actual cost 0.001000 USD" in text
    assert "saved 0.009000 USD (90.0%)" in text


def test_no_stats_says_so() -> None:
    view = ledger_view(None, ["small"])
    assert isinstance(view, Text) and "not answering /stats" in view.plain
