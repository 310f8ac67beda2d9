"""What the savings fold reads from a ModelCascade's status: the counter slots and the retired sums, typed. Pure.

The CRD schema refuses a malformed slot, but a status written before the
schema typed the slots (or by a client that skips validation) may still hold
one, and one bad slot must not stop the fold of all the others: each malformed
value is read as its default (0 for a figure), with a warning for the log.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kascade.api.counters import CounterFigures, CounterSlot, RetiredCounters, RetiredProcess
from kascade.api.errors import field_path
from kascade.api.status import REPLICA_COUNTERS
from kascade.api.times import TimeError, parse_time

RETIRED_COUNTERS = "retiredCounters"
RETIRED_PROCESSES = "retiredProcesses"

NEVER = datetime.min.replace(tzinfo=UTC)

# Where the status reports each figure the fold guards (traffic.errors counts the failed requests).
REPORTED_AS: dict[str, tuple[str, str]] = {
    "requests": ("traffic", "requests"),
    "failed": ("traffic", "errors"),
    "escalations": ("traffic", "escalations"),
    "answered_by": ("traffic", "answeredBy"),
    "actual": ("cost", "actual"),
    "baseline": ("cost", "baseline"),
    "escalations_logged": ("traffic", "escalationsLogged"),
    "escalation_log_dropped": ("traffic", "escalationLogDropped"),
}

Model = TypeVar("Model", bound=BaseModel)


def _joined(path: str) -> str:
    return path if path.startswith("[") else f".{path}"


def read_leniently(model: type[Model], raw: Mapping[str, Any], where: str, warnings: list[str]) -> Model:
    """`raw` as a `model`, each malformed value left out (so read as its default) with a warning."""
    data = copy.deepcopy(dict(raw))
    for _ in range(64):  # each round leaves out at least one value; a slot has far fewer
        try:
            return model.model_validate(data)
        except ValidationError as error:
            for problem in error.errors():
                path = field_path(problem["loc"])
                why = problem["msg"]
                warnings.append(
                    f"{where}{_joined(path)}: {problem['input']!r} is not valid ({why}); left out (read as 0)"
                )
                _leave_out(data, problem["loc"])
    warnings.append(f"{where}: could not be read; read as empty")
    return model()


def _leave_out(data: dict[str, Any], loc: tuple[int | str, ...]) -> None:
    node: Any = data
    for part in loc[:-1]:
        if not isinstance(node, Mapping) or part not in node:
            return
        node = node[part]
    if isinstance(node, dict) and loc:
        node.pop(loc[-1], None)


def read_time(value: str | None, where: str, warnings: list[str]) -> datetime | None:
    """A time of the status; None when there is none, and when it is not a time (with a warning naming `where`).

    The fold's times only order things (the newest process of a pod, the
    oldest credit, the earliest start): a malformed one is read as no time,
    which sorts oldest, rather than stopping the fold of every other slot.
    """
    if not value:
        return None
    try:
        return parse_time(value)
    except TimeError as error:
        warnings.append(f"{where}: {error}; read as no time")
        return None


def earliest(times: Sequence[tuple[str, str | None]], warnings: list[str]) -> str | None:
    """The earliest of (where, RFC 3339 string), as it was written; one that is not a time is left out (warned)."""
    parsed = [(moment, value) for where, value in times if (moment := read_time(value, where, warnings)) is not None]
    return min(parsed)[1] if parsed else None


@dataclass(frozen=True)
class StoredSlot:
    """One slot of `status.replicaCounters`, under its key, with its times parsed."""

    key: str
    slot: CounterSlot
    started: datetime | None
    updated: datetime | None

    @property
    def pod(self) -> str | None:
        return self.slot.pod or None

    @property
    def currency(self) -> str | None:
        return self.slot.currency

    @property
    def started_at(self) -> str | None:
        """`startedAt` as written, when it is a time."""
        return self.slot.started_at if self.started is not None else None

    def recency(self) -> tuple[datetime, datetime, str]:
        """Sort key: the newest process of a pod sorts last."""
        return (self.started or NEVER, self.updated or NEVER, self.key)


@dataclass(frozen=True)
class StoredCounters:
    """Everything of the status the fold reads, typed."""

    slots: tuple[StoredSlot, ...]  # sorted by key: float sums come out the same every time
    retired: RetiredCounters
    processes: dict[str, RetiredProcess]
    reported: CounterFigures  # the totals the status already shows (traffic, cost)
    cost: Mapping[str, Any]  # the status's cost as it is: currency, since, GPU-hours


def read_stored_counters(status: Mapping[str, Any], warnings: list[str]) -> StoredCounters:
    """The slots, the retired sum and credits, and the reported totals of a status dict."""
    raw_slots = status.get(REPLICA_COUNTERS) or {}
    if not isinstance(raw_slots, Mapping):
        warnings.append(f"{REPLICA_COUNTERS}: not an object; ignored")
        raw_slots = {}
    raw_processes = _mapping(status.get(RETIRED_PROCESSES))
    return StoredCounters(
        slots=tuple(read_slot(str(key), raw_slots[key], warnings) for key in sorted(raw_slots)),
        retired=read_leniently(RetiredCounters, _mapping(status.get(RETIRED_COUNTERS)), RETIRED_COUNTERS, warnings),
        processes={
            str(key): read_leniently(RetiredProcess, value, f"{RETIRED_PROCESSES}.{key}", warnings)
            for key, value in raw_processes.items()
            if isinstance(value, Mapping)
        },
        reported=read_reported(status),
        cost=_mapping(status.get("cost")),
    )


def read_slot(key: str, value: Any, warnings: list[str]) -> StoredSlot:
    where = f"{REPLICA_COUNTERS}.{key}"
    if not isinstance(value, Mapping):
        warnings.append(f"{where}: not an object; retired with nothing counted")
        return StoredSlot(key, CounterSlot(), None, None)
    slot = read_leniently(CounterSlot, value, where, warnings)
    started = read_time(slot.started_at, f"{where}.startedAt", warnings)
    if slot.started_at is None:
        warnings.append(f"{where}.startedAt: missing; read as no time")
    return StoredSlot(key, slot, started, read_time(slot.updated_at, f"{where}.updatedAt", warnings))


def read_reported(status: Mapping[str, Any]) -> CounterFigures:
    """The cumulative figures the status already reports; a garbled one reads as 0 (it cannot hold anything up)."""
    values = {}
    for figure, (section, name) in REPORTED_AS.items():
        value = _mapping(status.get(section)).get(name)
        if value is not None:
            values[figure] = value
    return read_leniently(CounterFigures, values, "status", [])


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
