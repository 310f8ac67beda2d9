"""Reserved GPUs: the GPU-hours of the tiers' ready replicas, integrated over time, and what they cost. Pure.

A GPU a tier's pod holds is paid for whether or not requests reach it, so the
bill of a self-hosted tier is its reservation: GPU-hours x `price.perGpuHour`.
The operator cannot see a reservation being used, only the Deployments' ready
replicas at each reconcile (a look), so it integrates them.

The estimator is the left rectangle rule: between two looks at t0 and t1, a
tier held what it held at t0,

    gpuHours(tier)        += readyGpus(t0) * (t1 - t0) / 1 h
    reservationCost(tier) += readyGpus(t0) * (t1 - t0) / 1 h * perGpuHour(t0)

with readyGpus = readyReplicas x resources.gpus. Everything about t0 is read
from the status the previous look wrote (`status.tiers[].readyGpus`,
`.perGpuHour`, and t0 itself as `status.cost.gpuHoursUntil`), so the figures
survive an operator restart: the next operator continues where the last write
left off. Consequences, each chosen:

- a first look (no `gpuHoursUntil`) starts the integration and adds nothing,
  and so does a tier's first look: before it, the operator saw no GPU of it. A
  `gpuHoursUntil` that is not a time (a status edited by hand) starts it again
  the same way: that loses at most the interval since the last good look, and
  counts none twice;
- the operator's clock going backwards (now before `gpuHoursUntil`) adds
  nothing and keeps `gpuHoursUntil`: no figure goes down and no interval counts
  twice;
- a long gap (the operator was down) is integrated at what was last seen, with
  no cap: Deployments keep their pods without the operator, and the GPUs stay
  paid for. A tier that scaled while the operator was down is billed at its old
  size until the operator looks again;
- a replica that was ready only between two looks is not seen: the figures have
  the reconcile interval's resolution (15 s by default);
- a price change applies from the look that first sees it (the interval before
  is billed at the old price, like a scale change);
- totals are the previous totals plus the increments of every tier of the
  previous look, so a tier removed from the spec keeps what it cost in the
  totals (its own entry goes with it). `reservationBaseline` adds the
  increments of the tier that was last at the previous look.

Writing: a look that changes nothing else in the status need not be written
(`gpu_hours_due`): deferring loses nothing, because the increments over
[t0, t2] at readyGpus(t0) equal the sum over [t0, t1] and [t1, t2] when t1 saw
the same readyGpus, and a look that sees other GPUs or prices changes
`status.tiers` and is written anyway. So GPU-hours move with every status
write, and at least every `OperatorSettings.gpu_hours_interval_seconds` while
a tier holds GPUs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kascade.api.status import Cost, TierStatus
from kascade.api.times import TimeError, parse_time

_SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class StoredReservation:
    """What the previous look wrote: the tiers as they were, the totals, and when."""

    tiers: tuple[TierStatus, ...]
    gpu_hours: float = 0.0
    reservation_cost: float = 0.0
    reservation_baseline: float = 0.0
    since: str | None = None
    until: str | None = None

    @property
    def ready_gpus(self) -> int:
        return sum(tier.ready_gpus for tier in self.tiers)

    @property
    def integrated_until(self) -> datetime | None:
        """Up to when the GPU-hours are integrated; None: the integration has not started (see the module)."""
        if self.until is None:
            return None
        try:
            return parse_time(self.until)
        except TimeError:
            return None  # a hand-edited status: start the integration again rather than guess an interval


@dataclass(frozen=True)
class Reservation:
    """The integrated figures: `status.tiers` with their GPU-hours, and the totals of `status.cost`."""

    tiers: list[TierStatus]
    gpu_hours: float
    reservation_cost: float
    reservation_baseline: float
    since: str | None
    until: str | None

    def costed(self, cost: Cost) -> Cost:
        """`cost` with these totals, its net savings computed again (`Cost.settled`)."""
        return cost.model_copy(
            update={
                "gpu_hours": self.gpu_hours,
                "reservation_cost": self.reservation_cost,
                "reservation_baseline": self.reservation_baseline,
                "gpu_hours_since": self.since,
                "gpu_hours_until": self.until,
            }
        ).settled()


def read_reservation(status: Mapping[str, Any]) -> StoredReservation:
    """The previous look from a raw `.status`; malformed figures read as 0 (and a malformed tier as none)."""
    raw_cost = status.get("cost")
    cost: Mapping[str, Any] = raw_cost if isinstance(raw_cost, Mapping) else {}
    tiers = []
    for raw in status.get("tiers") or []:
        try:
            tier = TierStatus.model_validate(raw)
        except ValidationError:
            continue
        tiers.append(
            tier.model_copy(
                update={
                    name: _amount(getattr(tier, name))
                    for name in ("ready_gpus", "per_gpu_hour", "gpu_hours", "reservation_cost")
                }
            )
        )
    return StoredReservation(
        tiers=tuple(tiers),
        gpu_hours=_amount(cost.get("gpuHours")),
        reservation_cost=_amount(cost.get("reservationCost")),
        reservation_baseline=_amount(cost.get("reservationBaseline")),
        since=_text(cost.get("gpuHoursSince")),
        until=_text(cost.get("gpuHoursUntil")),
    )


def integrate_gpu_hours(stored: StoredReservation, tiers: Sequence[TierStatus], now: str) -> Reservation:
    """Bring the GPU-hours from the previous look up to `now` (RFC 3339), and record this look's `tiers`.

    `tiers`: this look's `status.tiers`, with `ready_gpus` and `per_gpu_hour`
    set (`conditions.tier_statuses`). The interval since the previous look is
    charged at the previous look's GPUs and prices (see the module's docstring).
    """
    start, moment = stored.integrated_until, parse_time(now)
    if start is None:  # the first look: start the integration
        return _advanced(stored, tiers, hours=0.0, since=stored.since or now, until=now)
    if moment <= start:  # the operator's clock went backwards: nothing to add, and t0 stays
        return _advanced(stored, tiers, hours=0.0, since=stored.since, until=stored.until)
    hours = (moment - start).total_seconds() / _SECONDS_PER_HOUR
    return _advanced(stored, tiers, hours=hours, since=stored.since or stored.until, until=now)


def hold_gpu_hours(stored: StoredReservation, tiers: Sequence[TierStatus]) -> Reservation:
    """The previous look's figures, unchanged, on this look's `tiers`: what to write when nothing is due."""
    return _advanced(stored, tiers, hours=0.0, since=stored.since, until=stored.until)


def gpu_hours_due(stored: StoredReservation, now: str, interval_seconds: float) -> bool:
    """Whether to write the GPU-hours though nothing else in the status changed.

    When the integration has not started yet, or when a tier held GPUs at the
    previous look and `interval_seconds` have passed since it. A `now` that is
    not a time is never due: there is nothing to integrate up to.
    """
    start = stored.integrated_until
    if start is None:
        return True
    try:
        moment = parse_time(now)
    except TimeError:
        return False
    if (moment - start).total_seconds() < interval_seconds:
        return False
    return stored.ready_gpus > 0


def _advanced(
    stored: StoredReservation, tiers: Sequence[TierStatus], *, hours: float, since: str | None, until: str | None
) -> Reservation:
    """`hours` at the previous look's GPUs and prices added to its figures; this look's tiers carry them on."""
    added_hours = {tier.name: tier.ready_gpus * hours for tier in stored.tiers}
    added_cost = {tier.name: added_hours[tier.name] * tier.per_gpu_hour for tier in stored.tiers}
    before = {tier.name: tier for tier in stored.tiers}
    now_tiers = []
    for tier in tiers:
        previous = before.get(tier.name)
        now_tiers.append(
            tier.model_copy(
                update={
                    "gpu_hours": (previous.gpu_hours if previous else 0.0) + added_hours.get(tier.name, 0.0),
                    "reservation_cost": (previous.reservation_cost if previous else 0.0)
                    + added_cost.get(tier.name, 0.0),
                }
            )
        )
    last_tier_cost = added_cost[stored.tiers[-1].name] if stored.tiers else 0.0
    return Reservation(
        tiers=now_tiers,
        gpu_hours=stored.gpu_hours + sum(added_hours.values()),
        reservation_cost=stored.reservation_cost + sum(added_cost.values()),
        reservation_baseline=stored.reservation_baseline + last_tier_cost,
        since=since,
        until=until,
    )


def _amount(value: Any) -> Any:
    """A finite non-negative number as it is; anything else as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return 0
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
