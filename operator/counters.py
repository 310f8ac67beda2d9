"""The savings fold: router counter slots in, cumulative traffic and cost out. Pure.

Each router process writes its ABSOLUTE ledger snapshot (`Ledger.snapshot()`
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

Status fields this module reads and writes (camelCase, as in the resource):

- `replicaCounters`: {processId: {processId, pod, startedAt, updatedAt,
  currency, requests, failed, escalations, answeredBy: {tier: n},
  tiers: {...}, cost: {actual, baseline, saved, savedPercent}}} (written by routers).
- `retiredCounters`: {requests, failed, escalations, answeredBy: {tier: n},
  actual, baseline, currency, since, processes} - the sum over retired slots.
- `retiredProcesses`: {processId: {pod, retiredAt, requests, failed,
  escalations, answeredBy, actual, baseline}} - credited figures per retired process.
- `traffic`, `cost` (currency, actual, baseline, saved, savedPercent, since), `summary`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kascade.api.modelcascade import (
    Cost,
    ModelCascadeStatus,
    StatusSummary,
    TierStatus,
    Traffic,
)
from kascade.api.summary import summarize_status

REPLICA_COUNTERS = "replicaCounters"
RETIRED_COUNTERS = "retiredCounters"
RETIRED_PROCESSES = "retiredProcesses"
DEFAULT_KEEP_RETIRED = 64

_FLOAT_TOLERANCE = 1e-9  # relative: float sums in another order differ in the last bits
_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Counts:
    """The cumulative figures of one process, or of many added up."""

    requests: int = 0
    failed: int = 0
    escalations: int = 0
    answered_by: Mapping[str, int] = field(default_factory=dict)
    actual: float = 0.0
    baseline: float = 0.0

    def plus(self, other: Counts) -> Counts:
        return Counts(
            requests=self.requests + other.requests,
            failed=self.failed + other.failed,
            escalations=self.escalations + other.escalations,
            answered_by=_merge(self.answered_by, other.answered_by, lambda a, b: a + b),
            actual=self.actual + other.actual,
            baseline=self.baseline + other.baseline,
        )

    def beyond(self, credit: Counts) -> Counts:
        """What these figures count beyond `credit`, figure by figure, never below 0."""
        return Counts(
            requests=max(self.requests - credit.requests, 0),
            failed=max(self.failed - credit.failed, 0),
            escalations=max(self.escalations - credit.escalations, 0),
            answered_by={
                tier: max(count - credit.answered_by.get(tier, 0), 0) for tier, count in self.answered_by.items()
            },
            actual=max(self.actual - credit.actual, 0.0),
            baseline=max(self.baseline - credit.baseline, 0.0),
        )

    def at_least(self, other: Counts) -> Counts:
        """The larger of each figure."""
        return Counts(
            requests=max(self.requests, other.requests),
            failed=max(self.failed, other.failed),
            escalations=max(self.escalations, other.escalations),
            answered_by=_merge(self.answered_by, other.answered_by, max),
            actual=max(self.actual, other.actual),
            baseline=max(self.baseline, other.baseline),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failed": self.failed,
            "escalations": self.escalations,
            "answeredBy": dict(self.answered_by),
            "actual": self.actual,
            "baseline": self.baseline,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], warnings: list[str], where: str) -> Counts:
        """Flat form (retiredCounters, retiredProcesses entries): actual and baseline at the top."""
        return cls._read(data, data, warnings, where)

    @classmethod
    def from_snapshot(cls, slot: Mapping[str, Any], warnings: list[str], where: str) -> Counts:
        """A router's `/stats` snapshot: actual and baseline under `cost`."""
        cost = slot.get("cost")
        return cls._read(slot, cost if isinstance(cost, Mapping) else {}, warnings, where)

    @classmethod
    def _read(
        cls, data: Mapping[str, Any], money: Mapping[str, Any], warnings: list[str], where: str
    ) -> Counts:
        answered = data.get("answeredBy")
        answered_by = {}
        if isinstance(answered, Mapping):
            answered_by = {
                str(tier): _count(value, warnings, f"{where}.answeredBy.{tier}") for tier, value in answered.items()
            }
        return cls(
            requests=_count(data.get("requests"), warnings, f"{where}.requests"),
            failed=_count(data.get("failed"), warnings, f"{where}.failed"),
            escalations=_count(data.get("escalations"), warnings, f"{where}.escalations"),
            answered_by=answered_by,
            actual=_amount(money.get("actual"), warnings, f"{where}.actual"),
            baseline=_amount(money.get("baseline"), warnings, f"{where}.baseline"),
        )


def _merge(a: Mapping[str, int], b: Mapping[str, int], combine: Any) -> dict[str, int]:
    merged = dict(a)
    for key, value in b.items():
        merged[key] = combine(merged[key], value) if key in merged else value
    return merged


def _count(value: Any, warnings: list[str], where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        warnings.append(f"{where}: {value!r} is not a count; read as 0")
        return 0
    return int(value)


def _amount(value: Any, warnings: list[str], where: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        warnings.append(f"{where}: {value!r} is not an amount; read as 0")
        return 0.0
    return float(value)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _earliest(times: Sequence[Any]) -> str | None:
    """The earliest of RFC 3339 strings (unparseable ones ignored), as it was written."""
    parsed = [(moment, value) for value in times if (moment := _parse_time(value)) is not None]
    return min(parsed)[1] if parsed else None


@dataclass(frozen=True)
class _Slot:
    key: str
    pod: str | None
    started: datetime | None
    started_at: str | None
    updated: datetime | None
    currency: str | None
    counts: Counts

    def recency(self) -> tuple[datetime, datetime, str]:
        """Sort key: the newest process of a pod sorts last."""
        return (self.started or _NEVER, self.updated or _NEVER, self.key)


def _read_slot(key: str, value: Any, warnings: list[str]) -> _Slot:
    where = f"{REPLICA_COUNTERS}.{key}"
    if not isinstance(value, Mapping):
        warnings.append(f"{where}: not an object; retired with nothing counted")
        return _Slot(key, None, None, None, None, None, Counts())
    pod = value.get("pod")
    started_at = value.get("startedAt")
    started = _parse_time(started_at)
    if started is None:
        warnings.append(f"{where}.startedAt: {started_at!r} is not an RFC 3339 time")
    currency = value.get("currency")
    return _Slot(
        key=key,
        pod=pod if isinstance(pod, str) and pod else None,
        started=started,
        started_at=started_at if started is not None else None,
        updated=_parse_time(value.get("updatedAt")),
        currency=currency if isinstance(currency, str) else None,
        counts=Counts.from_snapshot(value, warnings, where),
    )


@dataclass(frozen=True)
class FoldResult:
    """The folded status fields, and what changed.

    `status_patch()` is the JSON merge patch to send to the status subresource
    (it deletes the retired slots with `null`); `changed` is False when that
    patch would leave the status as it is (then write nothing).
    """

    traffic: Traffic
    cost: Cost
    summary: StatusSummary
    retired_counters: dict[str, Any]
    retired_processes: dict[str, dict[str, Any]]
    retired: tuple[str, ...]
    pruned: tuple[str, ...]
    guarded: tuple[str, ...]
    warnings: tuple[str, ...]
    changed: bool

    def status_patch(self) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386) of `.status`: traffic, cost, summary, retired counters; retired slots null."""
        patch: dict[str, Any] = {
            "traffic": self.traffic.model_dump(mode="json", by_alias=True),
            "cost": self.cost.model_dump(
                mode="json", by_alias=True, include={"currency", "actual", "baseline", "saved", "saved_percent", "since"}
            ),
            "summary": self.summary.model_dump(mode="json", by_alias=True),
            RETIRED_COUNTERS: copy.deepcopy(self.retired_counters),
        }
        processes: dict[str, Any] = copy.deepcopy(self.retired_processes)
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


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _status_dict(status: ModelCascadeStatus | Mapping[str, Any] | None) -> dict[str, Any]:
    if status is None:
        return {}
    if isinstance(status, ModelCascadeStatus):
        return status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return copy.deepcopy(dict(status))


def _guard(new: float, old: float, name: str, guarded: list[str], *, exact: bool) -> Any:
    if new >= old:
        return new
    tolerance = 0 if exact else _FLOAT_TOLERANCE * max(1.0, abs(old))
    if old - new > tolerance:
        guarded.append(f"{name}: folded {new} < {old} already reported; kept {old}")
    return old


def _retiring(slots: Sequence[_Slot], live: set[str]) -> set[str]:
    """Keys of the slots to retire: pod gone (or unknown), or superseded by a newer process of the same pod."""
    newest: dict[str, _Slot] = {}
    for slot in slots:
        if slot.pod is None or slot.pod not in live:
            continue
        if slot.pod not in newest or slot.recency() > newest[slot.pod].recency():
            newest[slot.pod] = slot
    return {slot.key for slot in slots if slot.pod is None or newest.get(slot.pod) is not slot}


def _prune_credits(processes: dict[str, dict[str, Any]], *, keep: set[str], limit: int) -> tuple[str, ...]:
    """Drop the oldest credits beyond `limit` (in place), never one in `keep` (its slot is still there)."""
    by_age = sorted(processes, key=lambda k: (_parse_time(processes[k].get("retiredAt")) or _NEVER, k))
    prunable = [key for key in by_age if key not in keep]
    pruned = tuple(prunable[: max(len(processes) - max(limit, 0), 0)])
    for key in pruned:
        processes.pop(key)
    return pruned


def _monotonic(total: Counts, prev: Mapping[str, Any]) -> tuple[Counts, list[str]]:
    """`total`, with no figure below what the status already reports; and which figures were held up."""
    traffic, cost = _mapping(prev.get("traffic")), _mapping(prev.get("cost"))
    before = Counts.from_json(
        {
            "requests": traffic.get("requests"),
            "failed": traffic.get("errors"),
            "escalations": traffic.get("escalations"),
            "answeredBy": traffic.get("answeredBy"),
            "actual": cost.get("actual"),
            "baseline": cost.get("baseline"),
        },
        [],  # a garbled previous figure reads as 0: it cannot hold anything up
        "status",
    )
    guarded: list[str] = []
    folded = Counts(
        requests=_guard(total.requests, before.requests, "traffic.requests", guarded, exact=True),
        failed=_guard(total.failed, before.failed, "traffic.errors", guarded, exact=True),
        escalations=_guard(total.escalations, before.escalations, "traffic.escalations", guarded, exact=True),
        answered_by={
            tier: _guard(
                total.answered_by.get(tier, 0),
                before.answered_by.get(tier, 0),
                f"traffic.answeredBy.{tier}",
                guarded,
                exact=True,
            )
            for tier in {**before.answered_by, **total.answered_by}
        },
        actual=_guard(total.actual, before.actual, "cost.actual", guarded, exact=False),
        baseline=_guard(total.baseline, before.baseline, "cost.baseline", guarded, exact=False),
    )
    return folded, guarded


def fold_replica_counters(
    previous_status: ModelCascadeStatus | Mapping[str, Any] | None,
    live_pods: Collection[str],
    now: str,
    *,
    tiers: Sequence[TierStatus] | None = None,
    tier_count: int | None = None,
    keep_retired: int = DEFAULT_KEEP_RETIRED,
) -> FoldResult:
    """Fold the router slots of `previous_status` into traffic, cost and summary.

    `previous_status`: the resource's current `.status` (a ModelCascadeStatus
    or the raw dict; extra keys such as `retiredCounters` are read from either).
    `live_pods`: names of the router pods that exist now (any phase; a
    terminating pod may still write its last report). `now`: RFC 3339, stamped
    on newly retired processes. `tiers`, `tier_count`: for the summary's Tiers
    column (default: the tiers in `previous_status`). `keep_retired`: how many
    retired processes' credits to remember.

    Idempotent: folding the status that results from applying
    `status_patch()` with the same live pods changes nothing.
    """
    prev = _status_dict(previous_status)
    warnings: list[str] = []
    live = set(live_pods)

    raw_slots = prev.get(REPLICA_COUNTERS) or {}
    if not isinstance(raw_slots, Mapping):
        warnings.append(f"{REPLICA_COUNTERS}: not an object; ignored")
        raw_slots = {}
    slots = [_read_slot(str(key), raw_slots[key], warnings) for key in sorted(raw_slots)]

    retiring = _retiring(slots, live)

    raw_retired = _mapping(prev.get(RETIRED_COUNTERS))
    retired_total = Counts.from_json(raw_retired, warnings, RETIRED_COUNTERS)
    retired_count = _count(raw_retired.get("processes"), warnings, f"{RETIRED_COUNTERS}.processes")
    raw_processes = prev.get(RETIRED_PROCESSES) or {}
    processes: dict[str, dict[str, Any]] = (
        {str(k): dict(v) for k, v in raw_processes.items() if isinstance(v, Mapping)}
        if isinstance(raw_processes, Mapping)
        else {}
    )

    live_total = Counts()
    newly_retired: list[str] = []
    for slot in slots:  # sorted by key: float sums come out the same every time
        entry = processes.get(slot.key)
        credit = Counts.from_json(entry, warnings, f"{RETIRED_PROCESSES}.{slot.key}") if entry else Counts()
        extra = slot.counts.beyond(credit)
        if slot.key in retiring:
            retired_total = retired_total.plus(extra)
            if entry is None:
                retired_count += 1
            processes[slot.key] = {
                **({"pod": slot.pod} if slot.pod else {}),
                "retiredAt": now,
                **credit.at_least(slot.counts).to_json(),
            }
            newly_retired.append(slot.key)
        else:
            live_total = live_total.plus(extra)

    pruned = _prune_credits(processes, keep={slot.key for slot in slots} - retiring, limit=keep_retired)

    # Currency and since.
    currencies = {slot.currency for slot in slots if slot.currency}
    prev_cost = _mapping(prev.get("cost"))
    if len(currencies | ({raw_retired["currency"]} if isinstance(raw_retired.get("currency"), str) else set())) > 1:
        warnings.append(f"router slots report different currencies {sorted(currencies)}; amounts are added as they are")
    latest = max((s for s in slots if s.currency), key=_Slot.recency, default=None)
    currency = (
        (latest.currency if latest else None)
        or raw_retired.get("currency")
        or prev_cost.get("currency")
        or Cost().currency
    )
    retired_since = _earliest(
        [raw_retired.get("since"), *(s.started_at for s in slots if s.key in retiring)]
    )
    since = _earliest([prev_cost.get("since"), retired_since, *(s.started_at for s in slots)])

    retired_currency = raw_retired.get("currency") if isinstance(raw_retired.get("currency"), str) else None
    for slot in sorted((s for s in slots if s.key in retiring and s.currency), key=_Slot.recency):
        retired_currency = slot.currency
    retired_counters = {
        **retired_total.to_json(),
        "currency": retired_currency or currency,
        **({"since": retired_since} if retired_since else {}),
        "processes": retired_count,
    }

    folded, guarded = _monotonic(retired_total.plus(live_total), prev)
    requests, escalations, actual, baseline = folded.requests, folded.escalations, folded.actual, folded.baseline
    traffic = Traffic(
        requests=requests,
        answered_by=dict(sorted(folded.answered_by.items())),
        escalations=escalations,
        escalation_rate=escalations / requests if requests else 0.0,
        errors=folded.failed,
    )
    saved = baseline - actual
    cost = Cost.model_validate(
        {
            **{k: v for k, v in prev_cost.items() if k in ("gpuHours", "reservationCost")},
            "currency": currency,
            "actual": actual,
            "baseline": baseline,
            "saved": saved,
            "savedPercent": 100.0 * saved / baseline if baseline > 0 else 0.0,
            "since": since,
        }
    )
    tier_list = list(tiers) if tiers is not None else ModelCascadeStatus.model_validate(
        {"tiers": prev.get("tiers") or []}
    ).tiers
    summary = summarize_status(
        ModelCascadeStatus(tiers=tier_list, traffic=traffic, cost=cost), tier_count=tier_count
    )

    result = FoldResult(
        traffic=traffic,
        cost=cost,
        summary=summary,
        retired_counters=retired_counters,
        retired_processes=processes,
        retired=tuple(newly_retired),
        pruned=pruned,
        guarded=tuple(guarded),
        warnings=tuple(warnings),
        changed=False,
    )
    return replace(result, changed=apply_merge_patch(prev, result.status_patch()) != prev)
