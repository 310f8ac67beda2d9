"""The status the operator writes: one merge patch, composed from the spec, the children and the problems. Pure.

observedGeneration, endpoint, tiers, conditions, the router replicas'
counters folded into traffic and cost (`counters.fold_replica_counters`), and
the tiers' GPU-hours with their reservation cost (`reservation`). The
reconcile writes it only when it changes something (`changes_status`); the
GPU-hours alone move it every `OperatorSettings.gpu_hours_interval_seconds`
(`reservation.gpu_hours_due`).
"""

from __future__ import annotations

import datetime
from collections.abc import Collection, Mapping
from typing import Any

from kascade.api.modelcascade import ModelCascade
from kascade.api.status import RESERVATION_FIELDS, ModelCascadeStatus
from kascade.api.summary import summarize_status
from kascade.operator.build_router import endpoint_url
from kascade.operator.conditions import Health, compute_health, invalid_spec_conditions
from kascade.operator.counters import FoldResult, apply_merge_patch, fold_replica_counters
from kascade.operator.plan import ChildKey
from kascade.operator.problems import Problem
from kascade.operator.reservation import (
    Reservation,
    gpu_hours_due,
    hold_gpu_hours,
    integrate_gpu_hours,
    read_reservation,
)
from kascade.operator.settings import OperatorSettings


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def compose_status(
    cascade: ModelCascade,
    settings: OperatorSettings,
    status: Mapping[str, Any],
    observed: Mapping[ChildKey, Mapping[str, Any]],
    *,
    problems: list[Problem],
    live_pods: Collection[str],
    now: str,
    generation: int | None,
) -> tuple[dict[str, Any], FoldResult]:
    """The status merge patch: observedGeneration, endpoint, tiers, conditions, folded traffic and cost, GPU-hours.

    The GPU-hours are brought up to `now` when the patch changes the status
    anyway, or when they are due; otherwise they are written as they were, and
    the patch changes nothing (deferring them loses nothing: `reservation`).
    """
    health = compute_health(
        cascade, observed, previous=status.get("conditions") or [], problems=problems, now=now, generation=generation
    )
    fold = fold_replica_counters(status, live_pods, now, tiers=health.tiers, tier_count=len(cascade.spec.tiers),
                                 currency=cascade.spec.tiers[-1].price.currency)  # fmt: skip
    stored = read_reservation(status)
    patch = _patch(cascade, settings, health, fold, hold_gpu_hours(stored, health.tiers), generation=generation)
    if changes_status(status, patch) or gpu_hours_due(stored, now, settings.gpu_hours_interval_seconds):
        reservation = integrate_gpu_hours(stored, health.tiers, now)
        patch = _patch(cascade, settings, health, fold, reservation, generation=generation)
    return patch, fold


def _patch(
    cascade: ModelCascade, settings: OperatorSettings, health: Health, fold: FoldResult, reservation: Reservation,
    *, generation: int | None,
) -> dict[str, Any]:  # fmt: skip
    """The parts put together; the cost and the summary are the fold's with the reservation's figures."""
    cost = reservation.costed(fold.cost)
    shown = ModelCascadeStatus(tiers=reservation.tiers, traffic=fold.traffic, cost=cost)
    summary = summarize_status(shown, tier_count=len(cascade.spec.tiers))
    folded = fold.status_patch()
    return {
        "observedGeneration": generation,
        "endpoint": endpoint_url(cascade, settings),
        **health.status_fields(),
        **folded,
        "tiers": [tier.model_dump(mode="json", by_alias=True, exclude_none=True) for tier in reservation.tiers],
        "cost": {**folded["cost"], **cost.model_dump(mode="json", by_alias=True, include=_RESERVATION_KEYS)},
        "summary": summary.model_dump(mode="json", by_alias=True),
    }


_RESERVATION_KEYS = {*RESERVATION_FIELDS, "net_saved", "net_saved_percent"}  # the cost fields `_patch` adds


def invalid_status(status: Mapping[str, Any], *, message: str, now: str, generation: int | None) -> dict[str, Any]:
    """The status patch of a resource that does not parse: conditions Ready=False, Degraded=True (InvalidSpec)."""
    conditions = invalid_spec_conditions(status.get("conditions") or [], message=message, now=now, generation=generation)
    return {
        "observedGeneration": generation,
        "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions],
    }


def changes_status(status: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether the merge patch would change the status (the reconcile writes nothing otherwise)."""
    return apply_merge_patch(status, patch) != dict(status)
