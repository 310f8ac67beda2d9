"""Online calibration in the operator's status: the thresholds in force and the `Calibrated` condition. Pure.

From the routers' folded agreement counts (`status.replicaCounters[*].calibration*`,
folded like every counter), one step of `evaluation.online_calibration` per
scored tier: `status.calibration` (what each threshold was chosen on), the
threshold in force in `status.tiers[].threshold` (routers read it from the
answers to their status writes), and the `Calibrated` condition. With online
calibration off (no `spec.calibration`, or `shadowSampleRate` 0) the spec's
thresholds are pinned: no `status.calibration`, no `Calibrated` condition.

A tier whose samples rarely agree at all under a pure matcher on free text
(`exact`, or `number` on chat: answers that say the same thing in other words
count as disagreeing) can be certified only at a threshold where it keeps
almost nothing, or not at all: the condition's message says so and names the
matchers to use instead (`FREE_TEXT_MATCHERS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kascade.api.agreement import FREE_TEXT_MATCHERS, AnswerMatcher
from kascade.api.counters import CounterFigures
from kascade.api.modelcascade import Condition, ModelCascade, Task, TierStatus
from kascade.api.status import CalibrationStatus, TierCalibration
from kascade.calibration.online import calibrate_tiers, tier_bins, window_samples_of

CALIBRATED = "Calibrated"
# Below this share of agreeing samples in its window, a tier that misses its goal under a pure matcher on free text
# is told that the matcher, not the tier, is the likely reason (chat answers agree as text ~13% of the time).
RARE_AGREEMENT = 0.5


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
    advice = matcher_advice(cascade, status, folded)
    return CalibrationOutcome(status, calibrated_condition(status, generation, advice=advice))


def matcher_advice(cascade: ModelCascade, status: CalibrationStatus, folded: CounterFigures) -> dict[str, str]:
    """Per tier whose samples rarely agree under a pure matcher on free text: why, and what to use instead.

    Free text: `exact` on any task, or any pure matcher on chat and completion.
    Rarely: under `RARE_AGREEMENT` of the samples in the tier's window agree,
    once the window has the samples a move needs (not while collecting them).
    """
    spec = cascade.spec
    matcher = spec.matcher
    if not (matcher is AnswerMatcher.exact or (matcher.pure and spec.task is not Task.classify)):
        return {}
    instead = " or ".join(m.value for m in FREE_TEXT_MATCHERS)
    if not spec.judge_can_be_asked:
        instead = f"{AnswerMatcher.semantic.value} (or {AnswerMatcher.judge.value} with spec.calibration.judge.url)"
    advice = {}
    for tier in status.tiers:
        samples, agreed = _window_counts(tier, folded)
        if tier.reason == "CollectingSamples" or samples == 0 or agreed >= RARE_AGREEMENT * samples:
            continue
        advice[tier.name] = (
            f"only {agreed} of its {samples} samples ({agreed / samples:.0%}) agree under matcher {matcher.value}, "
            "so no threshold can be certified but where the tier keeps almost nothing: answers in free text "
            f"rarely agree as text; set spec.calibration.matcher to {instead}"
        )
    return advice


def _window_counts(tier: TierCalibration, folded: CounterFigures) -> tuple[int, int]:
    """(samples, agreed) in the tier's window: the cumulative counts less those at the window's start."""
    samples = sum(tier_bins(folded.calibration_samples, tier.name).values()) - sum(tier.window_older.samples.values())
    agreed = sum(tier_bins(folded.calibration_agreed, tier.name).values()) - sum(tier.window_older.agreed.values())
    return max(samples, 0), max(agreed, 0)


def calibrated_condition(
    status: CalibrationStatus, generation: int | None, *, advice: Mapping[str, str] | None = None
) -> Condition:
    """True when every scored tier meets the goal at its threshold in force; otherwise the first tier's reason.

    `advice`: per tier, what to change beyond the goal's own reason (`matcher_advice`), added to its message.
    """
    advice = advice or {}
    unmet = [tier for tier in status.tiers if not tier.met]
    if not unmet:
        parts = "; ".join(f"{t.name} at {t.threshold:g} ({t.samples} samples)" for t in status.tiers)
        notes = "".join(f'; tier "{t.name}": {advice[t.name]}' for t in status.tiers if t.name in advice)
        return Condition(
            type=CALIBRATED,
            status="True",
            reason="GoalMet",
            message=f"{status.goal} at {status.confidence:g} confidence: {parts}{notes}",
            observed_generation=generation,
        )
    first = unmet[0]
    extra = advice.get(first.name)
    return Condition(
        type=CALIBRATED,
        status="False",
        reason=first.reason,
        message=f'tier "{first.name}": {first.message}' + (f"; {extra}" if extra else ""),
        observed_generation=generation,
    )


def with_thresholds(tiers: Sequence[TierStatus], thresholds: Mapping[str, float]) -> list[TierStatus]:
    """`status.tiers` with the calibrated thresholds in force."""
    return [t.model_copy(update={"threshold": thresholds[t.name]}) if t.name in thresholds else t for t in tiers]
