"""Online calibration in the operator's status: the thresholds in force and the `Calibrated` condition. Pure.

From the routers' folded agreement counts (`status.replicaCounters[*].calibration*`,
folded like every counter), one step of `evaluation.online_calibration` per
scored tier: `status.calibration` (what each threshold was chosen on), the
threshold in force in `status.tiers[].threshold` (routers read it from the
answers to their status writes), and the `Calibrated` condition. With online
calibration off (no `spec.calibration`, or `shadowSampleRate` 0) the spec's
thresholds are pinned: no `status.calibration`, no `Calibrated` condition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kascade.api.counters import CounterFigures
from kascade.api.modelcascade import Condition, ModelCascade, TierStatus
from kascade.api.status import CalibrationStatus
from kascade.calibration.online import calibrate_tiers, window_samples_of

CALIBRATED = "Calibrated"


@dataclass(frozen=True)
class CalibrationOutcome:
    status: CalibrationStatus | None  # None: online calibration is off
    condition: Condition | None

    def thresholds(self) -> dict[str, float]:
        return {tier.name: tier.threshold for tier in self.status.tiers} if self.status is not None else {}


def calibrate(
    cascade: ModelCascade,
    previous: Mapping[str, Any] | None,
    folded: CounterFigures,
    *,
    now: str,
    generation: int | None,
) -> CalibrationOutcome:
    """One step of online calibration from the folded counts and the calibration status written before."""
    spec = cascade.spec
    calibration = spec.calibration
    if calibration is None or not calibration.online or len(spec.tiers) < 2:
        return CalibrationOutcome(None, None)
    declared = {tier.name: tier.accept.threshold for tier in spec.tiers if tier.accept is not None}
    before = CalibrationStatus.model_validate(previous) if previous else None
    models = {tier.name: tier.model.uri for tier in spec.tiers}
    status = calibrate_tiers(
        calibration, declared, folded, before, now=now, window_samples=window_samples_of(calibration), models=models
    )
    return CalibrationOutcome(status, calibrated_condition(status, generation))


def calibrated_condition(status: CalibrationStatus, generation: int | None) -> Condition:
    """True when every scored tier meets the goal at its threshold in force; otherwise the first tier's reason."""
    unmet = [tier for tier in status.tiers if not tier.met]
    if not unmet:
        parts = "; ".join(f"{t.name} at {t.threshold:g} ({t.samples} samples)" for t in status.tiers)
        return Condition(
            type=CALIBRATED,
            status="True",
            reason="GoalMet",
            message=f"{status.goal} at {status.confidence:g} confidence: {parts}",
            observed_generation=generation,
        )
    first = unmet[0]
    return Condition(
        type=CALIBRATED,
        status="False",
        reason=first.reason,
        message=f'tier "{first.name}": {first.message}',
        observed_generation=generation,
    )


def with_thresholds(tiers: Sequence[TierStatus], thresholds: Mapping[str, float]) -> list[TierStatus]:
    """`status.tiers` with the calibrated thresholds in force."""
    return [t.model_copy(update={"threshold": thresholds[t.name]}) if t.name in thresholds else t for t in tiers]
