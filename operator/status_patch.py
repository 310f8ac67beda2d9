"""The status the operator writes: one merge patch, composed from the spec, the children and the problems. Pure.

observedGeneration, endpoint, tiers, conditions, and the router replicas'
counters folded into traffic and cost (`counters.fold_replica_counters`). The
reconcile writes it only when it changes something (`changes_status`).
"""

from __future__ import annotations

import datetime
from collections.abc import Collection, Mapping
from typing import Any

from kascade.api.modelcascade import ModelCascade
from kascade.operator.build_router import endpoint_url
from kascade.operator.calibration_status import CALIBRATED, calibrate, with_thresholds
from kascade.operator.conditions import compute_health, invalid_spec_conditions, merge_conditions
from kascade.operator.counters import FoldResult, apply_merge_patch, fold_replica_counters
from kascade.operator.plan import ChildKey
from kascade.operator.problems import Problem
from kascade.operator.settings import OperatorSettings
from kascade.runtime.ledger import estimated_baseline


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
    """The status merge patch: observedGeneration, endpoint, tiers, conditions, folded traffic and cost."""
    health = compute_health(
        cascade, observed, previous=status.get("conditions") or [], problems=problems, now=now, generation=generation
    )
    fold = fold_replica_counters(status, live_pods, now, tiers=health.tiers, tier_count=len(cascade.spec.tiers))
    calibration = calibrate(cascade, status.get("calibration"), fold.folded, now=now, generation=generation)
    conditions = [c for c in health.conditions if c.type != CALIBRATED]
    if calibration.condition is not None:
        calibrated, *_ = merge_conditions(health.conditions, [calibration.condition], now=now)
        conditions.append(calibrated)
    tiers = with_thresholds(health.tiers, calibration.thresholds())
    patch = {
        "observedGeneration": generation,
        "endpoint": endpoint_url(cascade, settings),
        "tiers": [tier.model_dump(mode="json", by_alias=True, exclude_none=True) for tier in tiers],
        "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions],
        "calibration": (
            calibration.status.model_dump(mode="json", by_alias=True, exclude_none=True)
            if calibration.status is not None else None
        ),
        **fold.status_patch(),
    }
    patch["cost"].update(_baseline_estimate(cascade, fold))
    return patch, fold


def _baseline_estimate(cascade: ModelCascade, fold: FoldResult) -> dict[str, Any]:
    """The savings baseline corrected with the last tier's measured token counts (shadow samples), when there are enough."""
    folded = fold.folded
    estimate = estimated_baseline(folded.baseline, folded.baseline_tokens, folded.shadow_calls, cascade.spec.tiers[-1].price)
    if estimate is None:
        return {"estimatedBaseline": None, "estimatedSaved": None, "lastTierOutputRatio": None}
    return {"estimatedBaseline": estimate.baseline, "estimatedSaved": estimate.baseline - folded.actual,
            "lastTierOutputRatio": estimate.output_ratio}  # fmt: skip


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
