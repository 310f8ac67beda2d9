"""Thresholds that move while the router runs: taken from the cascade's status, or calibrated in process.

In a cluster the operator calibrates (one threshold for every replica) and
writes `status.calibration`; each router reads it from the answer to its own
status write (`StatusReporter`, every 15 s and at start) and applies it to its
tiers at once, without a restart (`apply_thresholds`). In local mode there is
one router and no operator: `InProcessCalibrator` runs the same step
(`evaluation.online_calibration.next_threshold`) on the ledger's own counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kascade.api.loop import Calibration
from kascade.api.status import CalibrationStatus
from kascade.calibration.online import calibrate_tiers, window_samples_of

if TYPE_CHECKING:
    from kascade.api.counters import CounterSlot
    from kascade.runtime.cascade import Cascade

log = logging.getLogger("kascade.router.calibration")


def thresholds_from_status(status: Mapping[str, Any]) -> dict[str, float]:
    """The thresholds in force per tier, out of a ModelCascade's status (JSON); {} when it has none."""
    calibration = status.get("calibration") if isinstance(status, Mapping) else None
    tiers = calibration.get("tiers") if isinstance(calibration, Mapping) else None
    return {
        tier["name"]: float(tier["threshold"])
        for tier in tiers or []
        if isinstance(tier, Mapping)
        and isinstance(tier.get("name"), str)
        and isinstance(tier.get("threshold"), int | float)
    }


def apply_thresholds(cascade: Cascade, thresholds: Mapping[str, float]) -> dict[str, float]:
    """Put new thresholds in force on the cascade's scored tiers; the ones that changed."""
    changed = {}
    for index, tier in enumerate(cascade.tiers):
        accept = tier.config.accept
        wanted = thresholds.get(tier.name)
        if accept is None or wanted is None or wanted == accept.threshold:
            continue
        config = tier.config.model_copy(update={"accept": accept.model_copy(update={"threshold": wanted})})
        cascade.tiers[index] = type(tier)(config=config, engine=tier.engine, is_last=tier.is_last)
        changed[tier.name] = wanted
    if changed:
        log.info("thresholds in force: %s", ", ".join(f"{name}={value:g}" for name, value in changed.items()))
    return changed


class InProcessCalibrator:
    """Local mode: every `interval_seconds`, one calibration step on this router's own counts, applied at once."""

    def __init__(
        self,
        calibration: Calibration,
        cascade: Cascade,
        snapshot: Callable[[], CounterSlot],
        *,
        interval_seconds: float = 5.0,
    ) -> None:
        self.calibration = calibration
        self._cascade = cascade
        self._snapshot = snapshot
        self._interval = interval_seconds
        # The spec's thresholds, read before any is moved: the starting point, not what is in force later.
        self._declared = {tier.name: tier.config.accept.threshold for tier in cascade.tiers if tier.config.accept}
        self.status: CalibrationStatus | None = None

    def step(self) -> CalibrationStatus:
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        self.status = calibrate_tiers(
            self.calibration,
            self._declared,
            self._snapshot(),
            self.status,
            now=now,
            window_samples=window_samples_of(self.calibration),
        )
        apply_thresholds(self._cascade, {tier.name: tier.threshold for tier in self.status.tiers})
        return self.status

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.step()
