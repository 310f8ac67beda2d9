"""When a cascade's next distillation run starts, which old runs go, and what the status says meanwhile. Pure.

A run starts when all of these hold:
- every run of the cascade is finished and decided (one at a time; a run the
  pod reported Failed may still be retried by its Job until it is decided);
- the schedule is due: a cron tick (UTC) has passed since the newest run was
  created (or, before the first run, since the cascade was); no schedule: due;
- at least `minSamples` escalations were logged since the newest run was created
  (`status.traffic.escalationsLogged` against the run's `spec.logRecords`).
Decided runs beyond `historyLimit`, oldest first, are deleted; the last
promoted one is kept beyond it: its status is the record of the promotion the
tier serves (`kascade.operator.promotion`), and deleting it would let an older
one apply again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from croniter import croniter

from kascade.api.distillation import Distillation
from kascade.api.loop import DistillationPolicy
from kascade.api.times import format_time
from kascade.operator.labels import child_name

_NOT_CREATED = datetime.min.replace(tzinfo=UTC)  # a manifest the API server has not created: first, and long ago


@dataclass(frozen=True)
class Schedule:
    """What the schedule says now."""

    start: str | None  # the name of the run to create now, or None
    waiting: str  # why no run starts now ("" when one does)
    delete: list[str] = field(default_factory=list)  # finished runs beyond the history limit


def creation_time(run: Distillation) -> datetime:
    """Sort key: when the API server created the run."""
    return run.created_at or _NOT_CREATED


def run_name(cascade: str, now: datetime) -> str:
    """`{cascade}-d{YYYYMMDDHHMMSS}`, short enough for a Job's pods (<= 52 characters leaves room for theirs)."""
    return child_name(cascade[:30], f"d{now:%Y%m%d%H%M%S}")


def plan_runs(
    policy: DistillationPolicy,
    runs: Sequence[Distillation],
    *,
    cascade: str,
    cascade_created: datetime | None,
    logged: int,
    now: datetime,
) -> Schedule:
    """What to do about a cascade's runs now (`runs`: those naming it, in any order)."""
    ordered = sorted(runs, key=creation_time)
    last_promoted = [run.metadata.name for run in ordered if run.promoted][-1:]
    kept = set(last_promoted)  # the record of what the tier serves
    active = [run for run in ordered if not run.decided]
    finished = [run for run in ordered if run.decided and run.metadata.name not in kept]
    delete = [run.metadata.name for run in finished[: max(0, len(finished) - policy.history_limit)]]
    if active:
        return Schedule(None, f"run {active[-1].metadata.name} is {active[-1].phase.value}", delete)
    newest = ordered[-1] if ordered else None
    since = creation_time(newest) if newest is not None else (cascade_created or now)
    if policy.schedule:
        tick = croniter(policy.schedule, now).get_prev(datetime)
        if tick <= since:
            following = croniter(policy.schedule, max(since, now)).get_next(datetime)
            return Schedule(None, f"next look at {format_time(following)} ({policy.schedule})", delete)
    new_records = logged - (newest.spec.log_records if newest is not None else 0)
    if new_records < policy.min_samples:
        return Schedule(
            None, f"{max(new_records, 0)} of {policy.min_samples} new escalation records since the last run", delete
        )
    return Schedule(run_name(cascade, now), "", delete)
