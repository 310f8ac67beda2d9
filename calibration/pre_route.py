"""A pre-route score's `skipBelow`: the boldest threshold whose share of kept requests skipped is certified. Pure.

A request whose predicted keep-probability is below `skipBelow` goes past
the tier unasked. The loss event is a request the tier would have kept that
is skipped, and its rate is taken among the kept requests alone: at most
`maxKeptSkipped` of them may be sent past. The thresholds of the accept
rules' grid (`selection.THRESHOLD_GRID`) are tested in a fixed sequence from
the safest (0: nothing skipped) upwards, each with the one-sided
Clopper–Pearson bound at the calibration's error level, and the walk stops
at the first that misses: the same fixed-sequence test as the accept
thresholds (`selection.select_threshold` with a `maxEscalationRate` goal on
the kept requests, whose "escalated" are exactly the skipped ones). So, with
probability at least `confidence`, new requests like the calibration data
that the tier would keep are skipped at most `maxKeptSkipped` of the time.

When not even the safest step certifies (too few kept requests, or none),
the choice is `skipBelow` 0: the score never skips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kascade.calibration.bounds import upper_bound
from kascade.calibration.selection import THRESHOLD_GRID, Goal, GoalKind, Outcome, select_threshold


@dataclass(frozen=True)
class SkipChoice:
    """The chosen `skipBelow` and what it was certified on."""

    skip_below: float  # 0 when none is certifiable: the tier is never skipped
    certified: bool
    bound: float  # upper bound on the share of kept requests skipped at skip_below (1 when nothing is known)
    kept: int  # kept requests in the calibration data
    kept_skipped: int  # of them, below skip_below
    requests: int  # all calibration requests
    skipped: int  # of them, below skip_below
    max_kept_skipped: float
    confidence: float
    reason: str  # why nothing could be certified; "" when a threshold was

    @property
    def skipped_share(self) -> float:
        """The share of calibration requests the threshold sends past the tier."""
        return self.skipped / self.requests if self.requests else 0.0


def choose_skip_below(
    probabilities: Sequence[float],
    kept: Sequence[bool],
    *,
    max_kept_skipped: float,
    confidence: float,
    grid: Sequence[float] = THRESHOLD_GRID,
) -> SkipChoice:
    """The boldest `skipBelow` of `grid` whose kept-skipped share is certified at most `max_kept_skipped`.

    `probabilities[i]`: the pre-route score's keep-probability of calibration
    request i, from a model that was not fitted on it; `kept[i]`: whether the
    tier's accept rule kept its answer."""
    if len(probabilities) != len(kept):
        raise ValueError(f"{len(probabilities)} probabilities for {len(kept)} kept flags")
    if not 0.0 < max_kept_skipped < 1.0 or not 0.0 < confidence < 1.0:
        raise ValueError("max_kept_skipped and confidence must lie strictly between 0 and 1")
    kept_scores = [p for p, k in zip(probabilities, kept, strict=True) if k]
    goal = Goal(GoalKind.max_escalation_rate, max_kept_skipped)
    if not kept_scores:
        return _never(probabilities, max_kept_skipped, confidence, "the tier kept none of the calibration requests")
    selection = select_threshold(
        [goal], [Outcome(score, True) for score in kept_scores], confidence=confidence, grid=grid
    )
    if selection.threshold is None:
        floor = upper_bound(0, len(kept_scores), 1.0 - confidence)
        reason = (
            f"{len(kept_scores)} kept calibration requests are too few to certify maxKeptSkipped="
            f"{max_kept_skipped:g} at {confidence:.0%} confidence (skipping none of them bounds the share at "
            f"{floor:.3g}): give more examples or allow a larger maxKeptSkipped"
        )
        return _never(probabilities, max_kept_skipped, confidence, reason, kept=len(kept_scores))
    (result,) = selection.results
    threshold = selection.threshold
    return SkipChoice(
        skip_below=threshold,
        certified=True,
        bound=result.bound,
        kept=len(kept_scores),
        kept_skipped=result.events,
        requests=len(probabilities),
        skipped=sum(p < threshold for p in probabilities),
        max_kept_skipped=max_kept_skipped,
        confidence=confidence,
        reason="",
    )


def _never(
    probabilities: Sequence[float], max_kept_skipped: float, confidence: float, reason: str, *, kept: int = 0
) -> SkipChoice:
    return SkipChoice(
        skip_below=0.0,
        certified=False,
        bound=1.0,
        kept=kept,
        kept_skipped=0,
        requests=len(probabilities),
        skipped=0,
        max_kept_skipped=max_kept_skipped,
        confidence=confidence,
        reason=reason,
    )
