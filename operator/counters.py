"""The savings fold: router counter slots in, cumulative traffic and cost out. Pure.

Each router process writes its ABSOLUTE ledger totals (`Ledger.counter_slot()`
plus `pod`: its pod's name) into `status.replicaCounters[<processId>]`, one
slot per process, as a JSON merge patch of that one key. Writing absolute
totals makes a retried or repeated write harmless: the slot just holds the same
numbers again. The operator folds the slots:

    total = retiredCounters + sum over live slots of (slot - what was already credited for it)

A slot is RETIRED when its pod is gone, or when a newer process (later
`startedAt`) of the same pod has a slot: its figures are added once into
`status.retiredCounters`, the slot is deleted (merge patch `null`), and the
figures credited for that process are remembered in `status.retiredProcesses`
(the newest `keep_retired` entries). Should a retired process write its slot
again (a pod list that missed a live pod, a late retried write), only what it
counted beyond its credit is added: nothing counts twice.

Finally a monotonic guard: no cumulative figure (requests, answered per tier,
escalations, errors, actual, baseline) is ever written lower than it already
is in the status; `FoldResult.guarded` names the figures it held up, for the log.

Status fields this module reads and writes (typed in `kascade.api.counters`;
read by `kascade.operator.counter_slots`):

- `replicaCounters`: {processId: CounterSlot} (written by the routers).
- `retiredCounters`: RetiredCounters - the sum over retired slots.
- `retiredProcesses`: {processId: RetiredProcess} - credited figures per retired process.
- `traffic`, `cost` (currency, actual, baseline, saved, savedPercent, since), `summary`.

The fold runs in named steps: read the stored counters, pick the slots to
retire, credit each slot, prune old credits, settle currency and since, hold
the totals up, and compose traffic, cost and summary.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kascade.api.counters import CounterFigures, RetiredCounters, RetiredProcess
from kascade.api.status import Cost, ModelCascadeStatus, StatusSummary, TierStatus, Traffic
from kascade.api.summary import summarize_status
from kascade.operator.counter_slots import (
    NEVER,
    REPLICA_COUNTERS,
    REPORTED_AS,
    RETIRED_COUNTERS,
    RETIRED_PROCESSES,
    StoredCounters,
    StoredSlot,
    earliest,
    read_stored_counters,
    read_time,
)
from kascade.operator.reservation import hold_gpu_hours, read_reservation

__all__ = [
    "DEFAULT_KEEP_RETIRED",
    "REPLICA_COUNTERS",
    "RETIRED_COUNTERS",
    "RETIRED_PROCESSES",
    "FoldResult",
    "apply_merge_patch",
    "fold_replica_counters",
]

DEFAULT_KEEP_RETIRED = 64

_FLOAT_TOLERANCE = 1e-9  # relative: float sums in another order differ in the last bits


@dataclass(frozen=True)
class FoldResult:
    """The folded status fields; `status_patch()` is the JSON merge patch to send to the status subresource."""

    traffic: Traffic
    cost: Cost
    summary: StatusSummary
    folded: CounterFigures  # every figure folded (online calibration reads its agreement counts)
    retired_counters: RetiredCounters
    retired_processes: dict[str, RetiredProcess]
    retired: tuple[str, ...]  # the slots retired now (deleted by the patch)
    pruned: tuple[str, ...]  # the credits forgotten now
    guarded: tuple[str, ...]  # the figures the monotonic guard held up
    warnings: tuple[str, ...]  # malformed values read as 0

    def status_patch(self) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386) of `.status`: traffic, cost, summary, retired counters; retired slots null."""
        patch: dict[str, Any] = {
            "traffic": self.traffic.model_dump(mode="json", by_alias=True),
            "cost": self.cost.model_dump(
                mode="json",
                by_alias=True,
                include={
                    "currency",
                    "actual",
                    "baseline",
                    "saved",
                    "saved_percent",
                    "shadow_cost",
                    "judge_cost",
                    "probe_cost",
                    "routed_past_saved",
                    "since",
                },
            ),
            "summary": self.summary.model_dump(mode="json", by_alias=True),
            RETIRED_COUNTERS: self.retired_counters.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
        processes: dict[str, Any] = {
            key: entry.model_dump(mode="json", by_alias=True, exclude_none=True)
            for key, entry in self.retired_processes.items()
        }
        processes.update(dict.fromkeys(self.pruned))
        if processes:
            patch[RETIRED_PROCESSES] = processes
        if self.retired:
            patch[REPLICA_COUNTERS] = dict.fromkeys(self.retired)
        return patch


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, returning a new value (what the API server does with a merge patch)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def fold_replica_counters(
    previous_status: ModelCascadeStatus | Mapping[str, Any] | None,
    live_pods: Collection[str],
    now: str,
    *,
    tiers: Sequence[TierStatus] | None = None,
    tier_count: int | None = None,
    currency: str | None = None,
    keep_retired: int = DEFAULT_KEEP_RETIRED,
) -> FoldResult:
    """Fold the router slots of `previous_status` into traffic, cost and summary.

    `previous_status`: the resource's current `.status` (a ModelCascadeStatus
    or the raw dict). `live_pods`: names of the router pods that exist now (any
    phase; a terminating pod may still write its last report). `now`: RFC 3339,
    stamped on newly retired processes. `tiers`, `tier_count`: for the
    summary's Tiers column (default: the tiers in `previous_status`).
    `currency`: the spec's, for the amounts before any router reported one
    (the GPU-hours' reservation cost is in it too).
    `keep_retired`: how many retired processes' credits to remember.

    Idempotent: folding the status that results from applying
    `status_patch()` with the same live pods changes nothing.
    """
    prev = _status_dict(previous_status)
    warnings: list[str] = []
    stored = read_stored_counters(prev, warnings)
    retiring = retiring_slots(stored.slots, set(live_pods))
    credits = credit_slots(stored, retiring, now)
    still_there = {slot.key for slot in stored.slots} - retiring
    pruned = prune_credits(credits.processes, warnings, keep=still_there, limit=keep_retired)
    money = currency_and_since(stored, retiring, warnings, declared=currency)
    folded, guarded = hold_up(credits.retired.plus(credits.live), stored.reported)
    traffic = traffic_of(folded)
    cost = cost_of(folded, money, stored.cost)
    tier_list = (
        list(tiers)
        if tiers is not None
        else ModelCascadeStatus.model_validate({"tiers": prev.get("tiers") or []}).tiers
    )
    shown = ModelCascadeStatus(tiers=tier_list, traffic=traffic, cost=cost)
    return FoldResult(
        traffic=traffic,
        cost=cost,
        folded=folded,
        summary=summarize_status(shown, tier_count=tier_count),
        retired_counters=credits.retired.model_copy(
            update={"currency": money.retired_currency, "since": money.retired_since, "processes": credits.count}
        ),
        retired_processes=credits.processes,
        retired=credits.newly_retired,
        pruned=pruned,
        guarded=tuple(guarded),
        warnings=tuple(warnings),
    )


def _status_dict(status: ModelCascadeStatus | Mapping[str, Any] | None) -> dict[str, Any]:
    if status is None:
        return {}
    if isinstance(status, ModelCascadeStatus):
        return status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return copy.deepcopy(dict(status))


# --- the steps of the fold, in order -----------------------------------------------------------


def retiring_slots(slots: Sequence[StoredSlot], live: set[str]) -> set[str]:
    """Keys of the slots to retire: pod gone (or unknown), or superseded by a newer process of the same pod."""
    newest: dict[str, StoredSlot] = {}
    for slot in slots:
        if slot.pod is None or slot.pod not in live:
            continue
        if slot.pod not in newest or slot.recency() > newest[slot.pod].recency():
            newest[slot.pod] = slot
    return {slot.key for slot in slots if slot.pod is None or newest.get(slot.pod) is not slot}


@dataclass
class Credits:
    """What the slots add up to: the live ones' figures, and the running sum of the retired ones."""

    retired: RetiredCounters
    count: int  # retired processes, ever
    processes: dict[str, RetiredProcess]  # what each retired process was credited with
    live: CounterFigures = field(default_factory=CounterFigures)
    newly_retired: tuple[str, ...] = ()


def credit_slots(stored: StoredCounters, retiring: set[str], now: str) -> Credits:
    """Each slot counts what it holds beyond its credit: into the live total, or, retiring, into the retired sum."""
    credits = Credits(retired=stored.retired, count=stored.retired.processes, processes=dict(stored.processes))
    for stored_slot in stored.slots:  # sorted by key: float sums come out the same every time
        figures = stored_slot.slot.figures()
        credit = credits.processes.get(stored_slot.key)
        extra = figures.beyond(credit or CounterFigures())
        if stored_slot.key not in retiring:
            credits.live = credits.live.plus(extra)
            continue
        credits.retired = credits.retired.plus(extra)
        credits.count += 1 if credit is None else 0
        credited = (credit or CounterFigures()).at_least(figures)
        credits.processes[stored_slot.key] = RetiredProcess(
            pod=stored_slot.pod, retired_at=now, **credited.model_dump(include=set(CounterFigures.model_fields))
        )
        credits.newly_retired += (stored_slot.key,)
    return credits


def prune_credits(
    processes: dict[str, RetiredProcess], warnings: list[str], *, keep: set[str], limit: int
) -> tuple[str, ...]:
    """Drop the oldest credits beyond `limit` (in place), never one in `keep` (its slot is still there).

    A credit whose `retiredAt` is not a time sorts oldest, so it goes first (with a warning).
    """
    retired_at = {
        key: read_time(entry.retired_at, f"{RETIRED_PROCESSES}.{key}.retiredAt", warnings) or NEVER
        for key, entry in processes.items()
    }
    by_age = sorted(processes, key=lambda key: (retired_at[key], key))
    prunable = [key for key in by_age if key not in keep]
    pruned = tuple(prunable[: max(len(processes) - max(limit, 0), 0)])
    for key in pruned:
        processes.pop(key)
    return pruned


@dataclass(frozen=True)
class Money:
    """Which currency the folded amounts are in, and since when they count."""

    currency: str
    since: str | None
    retired_currency: str
    retired_since: str | None


def currency_and_since(
    stored: StoredCounters, retiring: set[str], warnings: list[str], *, declared: str | None = None
) -> Money:
    """The newest slot's currency (then the retired sum's, the `declared` one, the status's); the earliest start."""
    slots, retired = stored.slots, stored.retired
    currencies = {slot.currency for slot in slots if slot.currency}
    if len(currencies | ({retired.currency} if retired.currency else set())) > 1:
        warnings.append(f"router slots report different currencies {sorted(currencies)}; amounts are added as they are")
    latest = max((slot for slot in slots if slot.currency), key=StoredSlot.recency, default=None)
    currency = (
        (latest.currency if latest else None)
        or retired.currency
        or declared
        or stored.cost.get("currency")
        or Cost().currency
    )
    retired_since = earliest(
        [
            (f"{RETIRED_COUNTERS}.since", retired.since),
            *((f"{REPLICA_COUNTERS}.{slot.key}.startedAt", slot.started_at) for slot in slots if slot.key in retiring),
        ],
        warnings,
    )
    retired_currency = retired.currency
    for slot in sorted((s for s in slots if s.key in retiring and s.currency), key=StoredSlot.recency):
        retired_currency = slot.currency
    return Money(
        currency=currency,
        since=earliest(
            [
                ("cost.since", stored.cost.get("since")),
                (f"{RETIRED_COUNTERS}.since", retired_since),
                *((f"{REPLICA_COUNTERS}.{slot.key}.startedAt", slot.started_at) for slot in slots),
            ],
            warnings,
        ),
        retired_currency=retired_currency or currency,
        retired_since=retired_since,
    )


def hold_up(total: CounterFigures, reported: CounterFigures) -> tuple[CounterFigures, list[str]]:
    """`total`, with no figure below what the status already reports; and which figures were held up."""
    guarded: list[str] = []
    values: dict[str, Any] = {}
    for figure, (section, name) in REPORTED_AS.items():
        new, old = getattr(total, figure), getattr(reported, figure)
        where = f"{section}.{name}"
        if isinstance(new, Mapping):
            values[figure] = {
                key: _at_least(new.get(key, 0), old.get(key, 0), f"{where}.{key}", guarded) for key in {**old, **new}
            }
        else:
            values[figure] = _at_least(new, old, where, guarded)
    return total.model_copy(update=values), guarded


def _at_least(new: float, old: float, name: str, guarded: list[str]) -> Any:
    if new >= old:
        return new
    exact = isinstance(new, int) and isinstance(old, int)
    tolerance = 0 if exact else _FLOAT_TOLERANCE * max(1.0, abs(old))
    if old - new > tolerance:
        guarded.append(f"{name}: folded {new} < {old} already reported; kept {old}")
    return old


def traffic_of(folded: CounterFigures) -> Traffic:
    return Traffic(
        requests=folded.requests,
        answered_by=dict(sorted(folded.answered_by.items())),
        escalations=folded.escalations,
        escalation_rate=folded.escalations / folded.requests if folded.requests else 0.0,
        errors=folded.failed,
        escalations_logged=folded.escalations_logged,
        escalation_log_dropped=folded.escalation_log_dropped,
        shadow_calls=folded.shadow_calls,
        judge_calls=folded.judge_calls,
        judge_failures=folded.judge_failures,
        judge_skipped=folded.judge_skipped,
        routed_past=dict(sorted(folded.routed_past.items())),
        probe_calls=folded.probe_calls,
        skipped_no_replica=dict(sorted(folded.skipped_no_replica.items())),
        cold_start_waits=dict(sorted(folded.cold_start_waits.items())),
        cold_start_wait_seconds=folded.cold_start_wait_seconds,
        admitted=dict(sorted(folded.admitted.items())),
        rejected=dict(sorted(folded.rejected.items())),
        rejected_at_escalation=dict(sorted(folded.rejected_at_escalation.items())),
        kept_under_load=dict(sorted(folded.kept_under_load.items())),
    )


def cost_of(folded: CounterFigures, money: Money, previous: Mapping[str, Any]) -> Cost:
    """The folded cost; the GPU-hours and the reservation's figures are not the fold's, and stay as they are."""
    usage = Cost(
        currency=money.currency,
        actual=folded.actual,
        baseline=folded.baseline,
        shadow_cost=folded.shadow_cost,
        judge_cost=folded.judge_cost,
        probe_cost=folded.probe_cost,
        routed_past_saved=folded.routed_past_saved,
        since=money.since,
    )
    return hold_gpu_hours(read_reservation({"cost": previous}), tiers=()).costed(usage)
