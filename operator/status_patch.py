"""The status the operator writes: one merge patch, composed from the spec, the children and the problems. Pure.

observedGeneration, endpoint, tiers, conditions, the router replicas'
counters folded into traffic and cost (`counters.fold_replica_counters`), and
the tiers' GPU-hours with their reservation cost (`reservation`). The
reconcile writes it only when it changes something (`changes_status`); the
GPU-hours alone move it every `OperatorSettings.gpu_hours_interval_seconds`
(`reservation.gpu_hours_due`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from kascade.api.modelcascade import Condition, ModelCascade
from kascade.api.status import RESERVATION_FIELDS, ModelCascadeStatus
from kascade.api.summary import summarize_status
from kascade.operator.build_router import endpoint_url
from kascade.operator.calibration_status import CALIBRATED, CalibrationOutcome, calibrate, with_thresholds
from kascade.operator.conditions import Health, compute_health, invalid_spec_conditions, merge_conditions
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
from kascade.runtime.baseline_estimate import estimated_baseline


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
    fold = fold_replica_counters(
        status,
        live_pods,
        now,
        tiers=health.tiers,
        tier_count=len(cascade.spec.tiers),
        currency=cascade.spec.tiers[-1].price.currency,
    )
    calibration = calibrate(cascade, status.get("calibration"), fold.folded, now=now, generation=generation)
    stored = read_reservation(status)
    parts = _Parts(cascade, settings, health, fold, calibration, generation=generation, now=now)
    patch = parts.patch(hold_gpu_hours(stored, health.tiers))
    if changes_status(status, patch) or gpu_hours_due(stored, now, settings.gpu_hours_interval_seconds):
        patch = parts.patch(integrate_gpu_hours(stored, health.tiers, now))
    return patch, fold


@dataclass(frozen=True)
class _Parts:
    """What the patch is put together from; the reservation's figures come last (written only when due)."""

    cascade: ModelCascade
    settings: OperatorSettings
    health: Health
    fold: FoldResult
    calibration: CalibrationOutcome
    generation: int | None
    now: str

    def patch(self, reservation: Reservation) -> dict[str, Any]:
        """The cost and the summary are the fold's with the reservation's figures; tiers carry the thresholds in force."""
        cost = reservation.costed(self.fold.cost)
        tiers = with_thresholds(reservation.tiers, self.calibration.thresholds())
        shown = ModelCascadeStatus(tiers=tiers, traffic=self.fold.traffic, cost=cost)
        summary = summarize_status(shown, tier_count=len(self.cascade.spec.tiers))
        folded = self.fold.status_patch()
        calibration = self.calibration.status
        return {
            "observedGeneration": self.generation,
            "endpoint": endpoint_url(self.cascade, self.settings),
            "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in self._conditions()],
            **folded,
            "tiers": [tier.model_dump(mode="json", by_alias=True, exclude_none=True) for tier in tiers],
            "calibration": calibration.model_dump(mode="json", by_alias=True, exclude_none=True)
            if calibration
            else None,
            "cost": {
                **folded["cost"],
                **cost.model_dump(mode="json", by_alias=True, include=_RESERVATION_KEYS),
                **_baseline_estimate(self.cascade, self.fold),
            },
            "summary": summary.model_dump(mode="json", by_alias=True),
        }

    def _conditions(self) -> list[Condition]:
        """The health conditions, and Calibrated while online calibration is on (dropped when it is off)."""
        conditions = [c for c in self.health.conditions if c.type != CALIBRATED]
        if self.calibration.condition is not None:
            calibrated, *_ = merge_conditions(self.health.conditions, [self.calibration.condition], now=self.now)
            conditions.append(calibrated)
        return conditions


_RESERVATION_KEYS = {*RESERVATION_FIELDS, "net_saved", "net_saved_percent"}  # the cost fields `_patch` adds


def _baseline_estimate(cascade: ModelCascade, fold: FoldResult) -> dict[str, Any]:
    """The savings baseline corrected with the last tier's measured token counts (shadow samples), when there are enough."""
    folded = fold.folded
    estimate = estimated_baseline(
        folded.baseline, folded.baseline_tokens, folded.shadow_calls, cascade.spec.tiers[-1].price
    )
    if estimate is None:
        return {"estimatedBaseline": None, "estimatedSaved": None, "lastTierOutputRatio": None}
    return {
        "estimatedBaseline": estimate.baseline,
        "estimatedSaved": estimate.baseline - folded.actual,
        "lastTierOutputRatio": estimate.output_ratio,
    }


def invalid_status(status: Mapping[str, Any], *, message: str, now: str, generation: int | None) -> dict[str, Any]:
    """The status patch of a resource that does not parse: conditions Ready=False, Degraded=True (InvalidSpec)."""
    conditions = invalid_spec_conditions(
        status.get("conditions") or [], message=message, now=now, generation=generation
    )
    return {
        "observedGeneration": generation,
        "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions],
    }


def changes_status(status: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether the merge patch would change the status (the reconcile writes nothing otherwise)."""
    return apply_merge_patch(status, patch) != dict(status)
