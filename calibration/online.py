"""Online calibration: each tier's threshold follows the declared goal on live traffic. Pure.

What the routers measure. With `shadowSampleRate` r, a router draws each
request with probability r. A drawn request that a tier before the last
accepted is sent to the last tier as well (a shadow sample, off the response
path); a drawn request that reached the last tier already has both answers.
Either way every tier that was asked gives one (score, agreed?) pair, judged by
the cascade's matcher. Because the draw does not depend on the score, the
pairs are a uniform sample of the traffic each tier sees, above and below its
threshold alike: what the selection code of `kascade calibrate`
(`selection.select_threshold`, the same finite-sample bound) needs. (Using every
escalation, not a drawn share, would over-represent low scores.)

How it is counted. Pairs are counted per tier and score bin (`BIN_EDGES`: a
score falls in the bin of the largest edge at or below it), in absolute counts
that only grow (`bin_key`): the routers' status slots, folded by the operator
like every other counter, so that restarts and retried writes neither lose nor
double count. Thresholds are chosen among the edges only, so the counts are
exact for every threshold considered.

How a threshold moves (`next_threshold`), on a sliding window of recent samples
(`Window`: between `windowSamples` and twice as many), so that a shift in the
workload moves it:
- fewer than `minSamples`: it stays where it is (the spec's threshold at first);
- the goal certified at t: it moves up to t at once (safer); down to t only
  when t is more than `hysteresis` below it (bolder), so that it does not
  oscillate between neighbouring edges (the default, 0.05, is one bin below
  0.9); always within
  [minThreshold, maxThreshold];
- the goal not certifiable within the bounds: it goes to `maxThreshold`, the
  safest allowed, and the `Calibrated` condition says why.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from kascade.api.loop import Calibration
from kascade.api.status import BinCounts, CalibrationStatus, TierCalibration
from kascade.calibration.bounds import interval
from kascade.calibration.selection import Goal, GoalKind, Outcome, select_threshold

if TYPE_CHECKING:
    from kascade.api.counters import CounterFigures, CounterSlot

BIN_EDGES: tuple[float, ...] = tuple(
    sorted({i / 20 for i in range(20)} | {0.9 + i / 100 for i in range(10)} | {0.995, 0.999, 0.9995, 0.9999})
)


def bin_edge(score: float) -> float:
    """The edge of the bin a score falls in: the largest edge at or below it (0 for anything below 0)."""
    return BIN_EDGES[max(bisect.bisect_right(BIN_EDGES, score) - 1, 0)]


def bin_key(tier: str, score: float) -> str:
    """The key of a tier's score bin in the counter maps: `<tier>@<edge>`."""
    return f"{tier}@{bin_edge(score):g}"


def tier_bins(counts: Mapping[str, int], tier: str) -> dict[float, int]:
    """One tier's counts by bin edge, out of a counter map of every tier."""
    prefix = f"{tier}@"
    return {float(key[len(prefix) :]): value for key, value in counts.items() if key.startswith(prefix)}


@dataclass(frozen=True)
class Bins:
    """One tier's measured pairs: requests and agreements per bin edge."""

    samples: Mapping[float, int] = field(default_factory=dict)
    agreed: Mapping[float, int] = field(default_factory=dict)

    @classmethod
    def of(cls, samples: Mapping[str, int], agreed: Mapping[str, int], tier: str) -> Bins:
        return cls(tier_bins(samples, tier), tier_bins(agreed, tier))

    @property
    def total(self) -> int:
        return sum(self.samples.values())

    def minus(self, earlier: Bins) -> Bins:
        """What was counted since `earlier` (counts only grow; a smaller one reads as 0)."""
        return Bins(
            {e: max(n - earlier.samples.get(e, 0), 0) for e, n in self.samples.items()},
            {e: max(n - earlier.agreed.get(e, 0), 0) for e, n in self.agreed.items()},
        )

    def outcomes(self) -> list[Outcome]:
        result = []
        for edge, samples in self.samples.items():
            agreed = min(self.agreed.get(edge, 0), samples)
            result += [Outcome(edge, True, count=agreed), Outcome(edge, False, count=samples - agreed)]
        return [o for o in result if o.count]


@dataclass(frozen=True)
class Window:
    """A sliding window over cumulative counts: the counts at its start and at the start of the one before."""

    older: Bins = field(default_factory=Bins)
    newer: Bins = field(default_factory=Bins)

    def recent(self, cumulative: Bins) -> Bins:
        """The samples in the window: everything since the older start."""
        return cumulative.minus(self.older)

    def slid(self, cumulative: Bins, window_samples: int) -> Window:
        """Once a whole window was counted since the newer start, that start becomes the older one."""
        if cumulative.minus(self.newer).total >= window_samples:
            return Window(older=self.newer, newer=cumulative)
        return self


@dataclass(frozen=True)
class TierDecision:
    threshold: float  # in force after this step
    moved: bool
    samples: int  # in the window
    met: bool
    reason: str  # CollectingSamples, GoalMet, GoalNotMet
    message: str
    measured: Measured | None = None  # at the threshold in force; None with no samples


@dataclass(frozen=True)
class Measured:
    """The cascade's agreement with the last tier (1 - accepted-and-disagreed share), its interval, the escalation rate."""

    agreement: float
    agreement_low: float
    agreement_high: float
    escalation_rate: float


def _measured(bins: Bins, threshold: float, confidence: float) -> Measured | None:
    n = bins.total
    if n == 0:
        return None
    accepted_disagreed = sum(s - bins.agreed.get(e, 0) for e, s in bins.samples.items() if e >= threshold)
    escalated = sum(s for e, s in bins.samples.items() if e < threshold)
    low, high = interval(n - accepted_disagreed, n, confidence)
    return Measured((n - accepted_disagreed) / n, low, high, escalated / n)


def next_threshold(goals: list[Goal], calibration: Calibration, bins: Bins, *, current: float) -> TierDecision:
    """Where one tier's threshold goes, from the pairs in its window and the threshold in force now."""
    n = bins.total
    if n < calibration.min_samples:
        return TierDecision(
            current,
            False,
            n,
            False,
            "CollectingSamples",
            f"{n} of {calibration.min_samples} samples",
            _measured(bins, current, calibration.confidence),
        )
    grid = [e for e in BIN_EDGES if calibration.min_threshold <= e <= calibration.max_threshold]
    if calibration.max_threshold not in grid:
        grid.append(calibration.max_threshold)
    selection = select_threshold(goals, bins.outcomes(), confidence=calibration.confidence, grid=grid)
    if selection.threshold is None:
        safest = calibration.max_threshold
        return TierDecision(
            safest,
            safest != current,
            n,
            False,
            "GoalNotMet",
            f"{selection.reason}; the threshold is held at maxThreshold {safest:g}",
            _measured(bins, safest, calibration.confidence),
        )
    certified = max(selection.threshold, calibration.min_threshold)
    if certified > current or certified < current - calibration.hysteresis:
        threshold = certified
    else:
        threshold = current  # at or above the certified one: the goal holds there too
    met_at = ", ".join(f"{g}" for g in goals)
    return TierDecision(
        threshold,
        threshold != current,
        n,
        True,
        "GoalMet",
        f"{met_at} certified at {calibration.confidence:g} confidence for thresholds >= {certified:g} ({n} samples)",
        _measured(bins, threshold, calibration.confidence),
    )


def online_goals(calibration: Calibration) -> list[Goal]:
    """The goals online calibration can test (minAccuracy needs references: refused for online use)."""
    goals = []
    if calibration.min_agreement is not None:
        goals.append(Goal(GoalKind.min_agreement, calibration.min_agreement))
    if calibration.max_escalation_rate is not None:
        goals.append(Goal(GoalKind.max_escalation_rate, calibration.max_escalation_rate))
    return goals


def _bins_of(counts: BinCounts) -> Bins:
    return Bins({float(k): v for k, v in counts.samples.items()}, {float(k): v for k, v in counts.agreed.items()})


def _counts_of(bins: Bins) -> BinCounts:
    return BinCounts(
        samples={f"{k:g}": v for k, v in bins.samples.items()}, agreed={f"{k:g}": v for k, v in bins.agreed.items()}
    )


def calibrate_tiers(
    calibration: Calibration,
    declared: Mapping[str, float],
    figures: CounterFigures | CounterSlot,
    previous: CalibrationStatus | None,
    *,
    now: str,
    window_samples: int,
    models: Mapping[str, str] | None = None,
) -> CalibrationStatus:
    """One step of online calibration for every scored tier: pure, what the operator and local mode both run.

    `declared`: each scored tier's threshold in the spec (the starting point;
    a changed one restarts from itself). `figures`: the cumulative counts.
    `models`: each scored tier's model; a new one (a promoted student) restarts
    from the spec's threshold and forgets the samples taken of the old one.
    """
    goals = online_goals(calibration)
    before = {tier.name: tier for tier in (previous.tiers if previous is not None else [])}
    tiers = []
    for name, spec_threshold in declared.items():
        cumulative = Bins.of(figures.calibration_samples, figures.calibration_agreed, name)
        last = before.get(name)
        model = (models or {}).get(name)
        if last is None or last.declared != spec_threshold:
            last = TierCalibration(name=name, threshold=spec_threshold, declared=spec_threshold)
        elif model is not None and last.model is not None and last.model != model:
            forgotten = _counts_of(cumulative)
            last = TierCalibration(
                name=name,
                threshold=spec_threshold,
                declared=spec_threshold,
                window_older=forgotten,
                window_newer=forgotten,
            )
        window = Window(_bins_of(last.window_older), _bins_of(last.window_newer)).slid(cumulative, window_samples)
        decision = next_threshold(goals, calibration, window.recent(cumulative), current=last.threshold)
        measured = asdict(decision.measured) if decision.measured is not None else {}
        tiers.append(
            TierCalibration(
                name=name,
                threshold=decision.threshold,
                declared=spec_threshold,
                model=model,
                samples=decision.samples,
                **measured,
                met=decision.met,
                reason=decision.reason,
                message=decision.message,
                last_moved=now if decision.moved else last.last_moved,
                window_older=_counts_of(window.older),
                window_newer=_counts_of(window.newer),
            )
        )
    return CalibrationStatus(goal=", ".join(str(g) for g in goals), confidence=calibration.confidence, tiers=tiers)


def window_samples_of(calibration: Calibration) -> int:
    """The sliding window's length: ten times the samples a move needs (between it and twice as many are used)."""
    return 10 * calibration.min_samples
