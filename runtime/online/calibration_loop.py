"""Thresholds that move while the router runs: taken from the cascade's status, or calibrated in process.

In a cluster the operator calibrates (one threshold for every replica) and
writes `status.calibration`; each router reads it from the answer to its own
status write (`StatusReporter`, every 15 s and at start) and puts it in force
on its tiers at once, without a restart (`thresholds_from_status`, then
`Cascade.set_thresholds`). In local mode there is one router and no operator:
`InProcessCalibrator` runs the same step (`kascade.calibration.online.calibrate_tiers`)
on the ledger's own counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kascade.api.loop import Calibration
from kascade.api.status import CalibrationStatus
from kascade.api.times import format_time, utc_now
from kascade.calibration.online import calibrate_tiers, window_samples_of

if TYPE_CHECKING:
    from kascade.api.counters import CounterSlot
    from kascade.runtime.cascade import Cascade


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
        now = format_time(utc_now())
        self.status = calibrate_tiers(
            self.calibration,
            self._declared,
            self._snapshot(),
            self.status,
            now=now,
            window_samples=window_samples_of(self.calibration),
        )
        self._cascade.set_thresholds({tier.name: tier.threshold for tier in self.status.tiers})
        return self.status

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.step()
