"""A tier that scales to zero: what the router does while it has no ready replica.

How the router knows: a connection to the tier that cannot be made at all
(`TierError.no_connection`: refused, no route). A tier's Service with no
ready endpoint gives exactly that (kube-proxy rejects connections to it at
once), and it is the present state, seen by the request that needs it; no
readiness list to keep in step, no config to rewrite when the autoscaler
moves. A tier that is up but failing answers (5xx, a timeout) and is handled
as before: retried within the budget, then `onTierError`.

- A tier before the last (`skip`): the request skips it at once, no retry,
  no call accounted, and the next tier answers; the skip is counted
  (`skippedNoReplica` in `/stats` and the status,
  `kascade_tier_skipped_no_replica_total`; `small=skipped(no-replica)` in
  the trail header), and that count is the demand that wakes the tier
  (`operator/build_autoscaling.py`).
- The last tier (`wait_seconds`, its `autoscaling.coldStartWaitSeconds`): the
  request asks again every `poll_seconds` until a replica answers or the wait
  is spent (then 503, as any unreachable last tier); each wait is counted with
  its seconds (`coldStartWaits`, `coldStartWaitSeconds`; the histogram
  `kascade_tier_cold_start_wait_seconds`).

Pure: the decisions; `tier_call` acts on them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kascade.runtime.engines.base import TierError, TierErrorKind

if TYPE_CHECKING:
    from kascade.runtime.attempts import Attempts
    from kascade.runtime.config import TierConfig
    from kascade.runtime.ledger import Ledger
    from kascade.runtime.metrics import RouterMetrics

POLL_SECONDS = 0.5  # how often a request waiting for the last tier asks again


@dataclass(frozen=True, slots=True)
class ReplicaAbsence:
    """What a connection the tier refuses means: skip the tier, wait for it, or nothing special (retry, then
    `onTierError`, as for any unreachable tier)."""

    skip: bool = False
    wait_seconds: float = 0.0
    poll_seconds: float = POLL_SECONDS

    @classmethod
    def of(cls, config: TierConfig) -> ReplicaAbsence:
        if not config.skip_without_replica and config.cold_start_wait_seconds is None:
            return ALWAYS_SERVED
        return cls(skip=config.skip_without_replica, wait_seconds=config.cold_start_wait_seconds or 0.0)

    def skips(self, error: TierError) -> bool:
        """Whether `error` means the tier has no replica and the request goes on to the next tier."""
        return self.skip and error.no_connection

    def pause(self, error: TierError, waited_seconds: float) -> float | None:
        """Seconds to wait before asking the tier again for a replica; None: the wait is over (or not one)."""
        if not error.no_connection or self.wait_seconds <= 0:
            return None
        left = self.wait_seconds - waited_seconds
        return min(self.poll_seconds, left) if left > 0 else None


ALWAYS_SERVED = ReplicaAbsence()


class NoReplica(TierError):
    """The tier has no ready replica and is skipped (a tier before the last that scales to zero)."""

    def __init__(self, tier: str, cause: TierError) -> None:
        super().__init__(TierErrorKind.unavailable, f"tier {tier!r} has no ready replica: {cause.message}")
        self.tier = tier


class ReplicaAbsenceCounts:
    """A router's counts of tiers without a replica (the ledger holds one; its counter slot shows them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._skipped: dict[str, int] = {}
        self._waits: dict[str, int] = {}
        self._wait_seconds = 0.0

    def note(self, attempts: Attempts) -> None:
        """What one request met: the tiers it skipped, its waits for the last tier."""
        with self._lock:
            for tier in attempts.without_replica:
                self._skipped[tier] = self._skipped.get(tier, 0) + 1
            for tier, seconds in attempts.cold_start_waits:
                self._waits[tier] = self._waits.get(tier, 0) + 1
                self._wait_seconds += max(seconds, 0.0)

    def slot_fields(self) -> dict[str, Any]:
        """`skippedNoReplica`, `coldStartWaits` and `coldStartWaitSeconds` of the counter slot."""
        with self._lock:
            return {
                "skipped_no_replica": dict(self._skipped),
                "cold_start_waits": dict(self._waits),
                "cold_start_wait_seconds": self._wait_seconds,
            }


def note_replica_absences(attempts: Attempts, ledger: Ledger, metrics: RouterMetrics | None) -> None:
    """Count what one request met of tiers without a replica, in the ledger and the metrics."""
    if not (attempts.without_replica or attempts.cold_start_waits):
        return
    ledger.absences.note(attempts)
    if metrics is not None:
        for tier in attempts.without_replica:
            metrics.observe_skipped_no_replica(tier)
        for tier, seconds in attempts.cold_start_waits:
            metrics.observe_cold_start_wait(tier, seconds)
