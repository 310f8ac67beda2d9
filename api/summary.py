"""The human-readable figures `kubectl get modelcascades` shows.

Printer columns can only show fields as they are stored, so the operator writes
these strings into `status.summary` next to the numbers they come from.
"""

from __future__ import annotations

import math

from kascade.api.status import Cost, ModelCascadeStatus, StatusSummary, TierStatus, Traffic

NOT_YET = "-"  # shown before there is anything to count


def summarize_status(status: ModelCascadeStatus, *, tier_count: int | None = None) -> StatusSummary:
    """Summarize a cascade's status for the Tiers, Escalation, Saved, Reserved and Net columns.

    `tier_count` is the number of tiers in the spec; without it, the tiers the
    status reports are counted (before the operator has seen any, there are none).
    """
    total = len(status.tiers) if tier_count is None else tier_count
    return StatusSummary(
        tiers=format_tiers(status.tiers, total),
        escalation=format_escalation(status.traffic),
        saved=format_saved(status.cost),
        reserved=format_reserved(status.cost),
        net_saved=format_net_saved(status.cost),
    )


def tier_is_ready(tier: TierStatus) -> bool:
    """A tier serves when the operator says so (tiers without pods) or one of its replicas is ready."""
    if tier.ready is not None:
        return tier.ready
    return tier.ready_replicas > 0


def format_tiers(tiers: list[TierStatus], total: int) -> str:
    """`ready/total`, like kubectl's READY column: "2/2", "1/3"."""
    ready = sum(1 for tier in tiers if tier_is_ready(tier))
    return f"{min(ready, total)}/{total}"


def format_escalation(traffic: Traffic) -> str:
    """The share of requests that escalated, as a percentage with one decimal: "12.5%"."""
    if traffic.requests <= 0:
        return NOT_YET
    rate = min(max(traffic.escalation_rate, 0.0), 1.0)
    return f"{rate * 100:.1f}%"


def format_saved(cost: Cost) -> str:
    """Money saved against the all-last-tier baseline, and its share: "USD 1.23 (45.0%)".

    The percentage is computed from `saved` and `baseline` so that the column can
    never disagree with the amounts. Savings can be negative: a cascade whose
    small tier escalates most requests costs more than the last tier alone.
    """
    if cost.baseline <= 0 and cost.saved == 0:
        return NOT_YET
    amount = format_money(cost.saved)
    if cost.baseline <= 0:
        return f"{cost.currency} {amount}"
    return f"{cost.currency} {amount} ({cost.saved / cost.baseline * 100:.1f}%)"


def format_reserved(cost: Cost) -> str:
    """The reserved bill and the GPU-hours behind it: "USD 96.00 (120.0 GPU-h)"; "-" before any GPU-hour."""
    if cost.gpu_hours <= 0 and cost.reservation_cost <= 0:
        return NOT_YET
    return f"{cost.currency} {format_money(cost.reservation_cost)} ({format_gpu_hours(cost.gpu_hours)} GPU-h)"


def format_net_saved(cost: Cost) -> str:
    """Saved once the smaller tiers' GPUs are paid for, and its share of the whole baseline: "USD -3.20 (-1.5%)".

    The share is computed from `netSaved` and the whole baseline (the last
    tier's usage baseline plus its reservation), like `format_saved`'s.
    """
    whole_baseline = cost.baseline + cost.reservation_baseline
    net = cost.net_saved
    if whole_baseline <= 0 and net == 0:
        return NOT_YET
    amount = format_money(net)
    if whole_baseline <= 0:
        return f"{cost.currency} {amount}"
    return f"{cost.currency} {amount} ({net / whole_baseline * 100:.1f}%)"


def format_gpu_hours(hours: float) -> str:
    """One decimal, or two significant digits under a tenth: "1,234.5", "0.0042"."""
    if hours >= 0.1 or hours <= 0 or not math.isfinite(hours):
        return f"{hours:,.1f}"
    return f"{hours:.{1 - math.floor(math.log10(hours))}f}"


def format_money(amount: float) -> str:
    """Two decimals, or two significant digits for amounts under a cent: "1,234.50", "0.0012"."""
    size = abs(amount)
    if size >= 0.01 or size == 0 or not math.isfinite(size):
        return f"{amount:,.2f}"
    decimals = min(8, 1 - math.floor(math.log10(size)))
    return f"{amount:.{decimals}f}"
