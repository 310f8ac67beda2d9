"""Cost accounting: what each request cost, what it would have cost on the largest tier alone.

Pure bookkeeping (no I/O): the router records one `RequestOutcome` per request
and the ledger keeps absolute, never-decreasing totals. A snapshot of them is
served on the router's `/stats` and folded by the operator into the resource's
status, one slot per router process (`kascade.api.counters.CounterSlot`), so totals must be absolute (a restarted
process starts a new slot under a new process id) rather than deltas.

Prices are usage-based, per million tokens (`Price`); the operator integrates
the GPU-hours of reserved GPUs (`kascade.operator.reservation`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kascade.api.admission import AdmissionOutcome
from kascade.api.counters import CounterSlot, SlotCost, TierCounters
from kascade.api.modelcascade import Price, currency_conflict
from kascade.api.times import format_time_precise
from kascade.runtime.replica_absence import ReplicaAbsenceCounts

_PER_MILLION = 1_000_000


@dataclass(frozen=True)
class TierCall:
    """One call to one tier. A failed call (`ok` False) usually has 0 tokens and costs 0."""

    tier: str
    input_tokens: int
    output_tokens: int
    latency_seconds: float
    ok: bool
    confidence: float | None = None


@dataclass(frozen=True)
class RequestOutcome:
    """Every tier call one client request made, in order, and which tier's answer was returned.

    `answered_by` is None when the request failed (no tier's answer returned).
    """

    answered_by: str | None
    calls: tuple[TierCall, ...]
    escalated: bool

    def answering_index(self) -> int | None:
        """Position in `calls` of the call whose answer was returned: the last successful call to `answered_by`.

        Retries of the answering tier may precede it as failed calls. None for
        a failed request.
        """
        if self.answered_by is None:
            return None
        for index in range(len(self.calls) - 1, -1, -1):
            call = self.calls[index]
            if call.tier == self.answered_by and call.ok:
                return index
        return None

    def answering_call(self) -> TierCall | None:
        """The call whose answer was returned (see `answering_index`)."""
        index = self.answering_index()
        return None if index is None else self.calls[index]


@dataclass(frozen=True)
class RequestCost:
    """`actual` paid, the all-last-tier `baseline`, and `saved` = baseline - actual (may be negative)."""

    actual: float
    baseline: float
    saved: float


def usage_cost(price: Price, input_tokens: int, output_tokens: int) -> float:
    """input_tokens * input_per_million / 1e6 + output_tokens * output_per_million / 1e6."""
    return (input_tokens * price.input_per_million + output_tokens * price.output_per_million) / _PER_MILLION


@dataclass
class _TierTotals:
    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    latency_seconds_sum: float = 0.0
    routed_past: int = 0  # requests that skipped the tier (pre-routing)
    routed_past_saved: float = 0.0
    admission: dict[AdmissionOutcome, int] = field(default_factory=dict)  # requests at the tier's gate, by outcome


BASELINE_TOKEN_KEYS = (
    "acceptedInput",
    "acceptedOutput",  # tokens of the answers accepted before the last tier
    "shadowAnsweredInput",
    "shadowAnsweredOutput",  # of those answers, on the requests shadow-sampled
    "shadowLastInput",
    "shadowLastOutput",  # the last tier's own tokens on the same requests
)


class Ledger:
    """Running totals of one router process: calls, tokens and cost per tier, savings overall.

    `tier_prices` is ordered cheapest first; its last key is the last tier,
    whose price defines the baseline. Every count and the actual and baseline
    totals only ever grow (prices and token counts are non-negative), which is
    what lets readers treat snapshots as monotonic counters.
    """

    def __init__(
        self,
        tier_prices: dict[str, Price],
        *,
        process_id: str | None = None,
        clock: Callable[[], float] = time.time,  # seconds since the epoch: the slot's startedAt and updatedAt
    ) -> None:
        if not tier_prices:
            raise ValueError("a ledger needs at least one tier price")
        conflict = currency_conflict(tier_prices)
        if conflict is not None:
            raise ValueError(conflict)
        self._prices = dict(tier_prices)
        self._last_tier = list(tier_prices)[-1]
        self._currency = next(iter(tier_prices.values())).currency
        self._process_id = process_id or uuid.uuid4().hex
        self._clock = clock
        self._started_at = clock()
        self._updated_at = self._started_at
        self._lock = threading.Lock()
        self.absences = ReplicaAbsenceCounts()  # tiers without a replica: skips, waits for the last
        self._requests = 0
        self._failed = 0
        self._escalations = 0
        self._answered_by = dict.fromkeys(tier_prices, 0)
        self._tiers = {tier: _TierTotals() for tier in tier_prices}
        self._actual = 0.0
        self._baseline = 0.0
        self._logged = 0
        self._log_dropped = 0
        self._shadow_calls = 0
        self._shadow_cost = 0.0
        self._judge_calls = 0
        self._judge_cost = 0.0
        self._judge_failures = 0
        self._judge_skipped = 0
        self._calibration_samples: dict[str, int] = {}
        self._calibration_agreed: dict[str, int] = {}
        self._baseline_tokens = dict.fromkeys(BASELINE_TOKEN_KEYS, 0)
        self._probe_calls = 0
        self._probe_cost = 0.0

    @property
    def process_id(self) -> str:
        return self._process_id

    def _check(self, outcome: RequestOutcome) -> None:
        """Refuse an outcome before any total changes, so a bad one leaves no half-record."""
        named = {call.tier for call in outcome.calls}
        if outcome.answered_by is not None:
            named.add(outcome.answered_by)
        unknown = sorted(named - self._prices.keys())
        if unknown:
            raise ValueError(f"unknown tier(s) {unknown}; the ledger knows {list(self._prices)}")
        for call in outcome.calls:
            if call.input_tokens < 0 or call.output_tokens < 0:
                raise ValueError(f"tier {call.tier!r}: token counts cannot be negative ({call})")

    def cost_of(self, outcome: RequestOutcome) -> RequestCost:
        """What `outcome` cost and would have cost on the last tier alone, without recording it.

        actual: every call at its tier's price (an escalated request pays its
        discarded cheap answer too). baseline: the answering call's tokens at
        the last tier's price (a request the last tier answered costs exactly
        its own call); 0 for a failed request, whose actual still counts.
        """
        self._check(outcome)
        actual = sum(
            usage_cost(self._prices[call.tier], call.input_tokens, call.output_tokens) for call in outcome.calls
        )
        answering = outcome.answering_call()
        baseline = (
            usage_cost(self._prices[self._last_tier], answering.input_tokens, answering.output_tokens)
            if answering is not None
            else 0.0
        )
        return RequestCost(actual=actual, baseline=baseline, saved=baseline - actual)

    def record(self, outcome: RequestOutcome) -> RequestCost:
        """Add one request's calls and cost to the totals; returns its cost."""
        cost = self.cost_of(outcome)
        with self._lock:
            self._requests += 1
            if outcome.answered_by is None:
                self._failed += 1
            else:
                self._answered_by[outcome.answered_by] += 1
            if outcome.escalated:
                self._escalations += 1
            for call in outcome.calls:
                self._add_call(call)
            answering = outcome.answering_call()
            if answering is not None and outcome.answered_by != self._last_tier:  # a baseline that was estimated
                self._baseline_tokens["acceptedInput"] += answering.input_tokens
                self._baseline_tokens["acceptedOutput"] += answering.output_tokens
            self._actual += cost.actual
            self._baseline += cost.baseline
            self._updated_at = max(self._updated_at, self._clock())
        return cost

    def _add_call(self, call: TierCall) -> float:
        """Under the lock: one call into its tier's totals; its cost."""
        totals = self._tiers[call.tier]
        totals.calls += 1
        totals.errors += 0 if call.ok else 1
        totals.input_tokens += call.input_tokens
        totals.output_tokens += call.output_tokens
        cost = usage_cost(self._prices[call.tier], call.input_tokens, call.output_tokens)
        totals.cost += cost
        # A wall-clock step can make a measured latency negative; it must not make the sum go down.
        totals.latency_seconds_sum += max(call.latency_seconds, 0.0)
        return cost

    def record_shadow(self, call: TierCall, answered: tuple[int, int]) -> float:
        """A shadow call to the last tier (online calibration): paid for, in its tier and in actual; its cost.

        `answered`: the (input, output) tokens of the answer the caller got, so
        that the last tier's own counts on the same requests correct the
        savings baseline (`estimated_baseline`).
        """
        if call.tier != self._last_tier or min(call.input_tokens, call.output_tokens, *answered) < 0:
            raise ValueError(f"a shadow call goes to the last tier ({self._last_tier!r}) with counts >= 0: {call}")
        with self._lock:
            cost = self._add_call(call)
            for key, count in zip(
                ("shadowAnsweredInput", "shadowAnsweredOutput", "shadowLastInput", "shadowLastOutput"),
                (*answered, call.input_tokens, call.output_tokens),
                strict=True,
            ):
                self._baseline_tokens[key] += count
            self._shadow_calls += 1
            self._shadow_cost += cost
            self._actual += cost
            self._updated_at = max(self._updated_at, self._clock())
        return cost

    def record_judge_call(self, cost: float, *, verdict: bool) -> None:
        """One call to the LLM judge (matcher judge), priced by the caller at the judge's price.

        Its cost is real spend, so it goes into `actual` (which lowers `saved`),
        and apart into `judgeCost`; it is in no tier's totals, since the judge
        answers no caller (and may be no tier at all). `verdict` False: the call
        gave none (an error, no logprobs, neither yes nor no), a `judgeFailures`.
        """
        if cost < 0:
            raise ValueError(f"a judge call cannot cost less than 0: {cost}")
        with self._lock:
            self._judge_calls += 1
            self._judge_failures += 0 if verdict else 1
            self._judge_cost += cost
            self._actual += cost
            self._updated_at = max(self._updated_at, self._clock())

    def note_judge_skipped(self) -> None:
        """An agreement question not put to the judge: its concurrency was taken (the sample is lost)."""
        with self._lock:
            self._judge_skipped += 1

    def note_routed_past(self, tier: str) -> float:
        """A request skipped `tier` (pre-routing); its call's estimated cost: the tier's mean answered call's so far."""
        with self._lock:
            totals = self._tiers[tier]
            answered = totals.calls - totals.errors
            saved = totals.cost / answered if answered > 0 else 0.0
            totals.routed_past += 1
            totals.routed_past_saved += saved
        return saved

    def note_admission(self, tier: str, outcome: AdmissionOutcome) -> None:
        """One request at `tier`'s gate (admission control): admitted, rejected, or turned away on escalation."""
        with self._lock:
            counts = self._tiers[tier].admission
            counts[outcome] = counts.get(outcome, 0) + 1

    def record_probe(self, call: TierCall) -> float:
        """A skipped tier asked anyway, off the response path (pre-routing): in its tier, `actual` and `probeCost`."""
        with self._lock:
            cost = self._add_call(call)
            self._probe_calls += 1
            self._probe_cost += cost
            self._actual += cost
            self._updated_at = max(self._updated_at, self._clock())
        return cost

    def note_agreement(self, bin_key: str, *, agreed: bool) -> None:
        """One (score, agreed?) pair of a tier, counted in its score bin (`kascade.calibration.online.bin_key`)."""
        with self._lock:
            self._calibration_samples[bin_key] = self._calibration_samples.get(bin_key, 0) + 1
            if agreed:
                self._calibration_agreed[bin_key] = self._calibration_agreed.get(bin_key, 0) + 1

    def note_escalation_logged(self, *, kept: bool) -> None:
        """One escalation offered to the escalation log: queued, or dropped because its queue was full."""
        with self._lock:
            if kept:
                self._logged += 1
            else:
                self._log_dropped += 1

    def note_escalation_log_lost(self, count: int) -> None:
        """Queued escalations the log could not keep after all (its writer died, or storage stayed down at a stop)."""
        with self._lock:
            self._log_dropped += count

    def counter_slot(self) -> CounterSlot:
        """The absolute totals: what `/stats` serves and what the router writes into its status slot."""
        with self._lock:
            saved = self._baseline - self._actual
            return CounterSlot(
                process_id=self._process_id,
                started_at=_slot_time(self._started_at),
                updated_at=_slot_time(self._updated_at),
                currency=self._currency,
                requests=self._requests,
                failed=self._failed,
                escalations=self._escalations,
                answered_by=dict(self._answered_by),
                tiers={
                    tier: TierCounters(
                        calls=totals.calls,
                        errors=totals.errors,
                        input_tokens=totals.input_tokens,
                        output_tokens=totals.output_tokens,
                        cost=totals.cost,
                        latency_seconds_sum=totals.latency_seconds_sum,
                    )
                    for tier, totals in self._tiers.items()
                },
                cost=SlotCost(
                    actual=self._actual,
                    baseline=self._baseline,
                    saved=saved,
                    saved_percent=100.0 * saved / self._baseline if self._baseline > 0 else 0.0,
                ),
                escalations_logged=self._logged,
                escalation_log_dropped=self._log_dropped,
                shadow_calls=self._shadow_calls,
                shadow_cost=self._shadow_cost,
                judge_calls=self._judge_calls,
                judge_cost=self._judge_cost,
                judge_failures=self._judge_failures,
                judge_skipped=self._judge_skipped,
                calibration_samples=dict(self._calibration_samples),
                calibration_agreed=dict(self._calibration_agreed),
                baseline_tokens=dict(self._baseline_tokens),
                routed_past={tier: totals.routed_past for tier, totals in self._tiers.items() if totals.routed_past},
                routed_past_saved=sum(totals.routed_past_saved for totals in self._tiers.values()),
                probe_calls=self._probe_calls,
                probe_cost=self._probe_cost,
                **self.absences.slot_fields(),
                **{outcome.value: self._admission_counts(outcome) for outcome in AdmissionOutcome},
            )

    def _admission_counts(self, outcome: AdmissionOutcome) -> dict[str, int]:
        """Under the lock: the tiers that saw `outcome` at their gate, with their counts."""
        return {tier: totals.admission[outcome] for tier, totals in self._tiers.items() if outcome in totals.admission}

    def snapshot(self) -> dict[str, Any]:
        """`counter_slot()` as JSON, with camelCase keys (the `/stats` body)."""
        return self.counter_slot().to_wire()


def _slot_time(epoch_seconds: float) -> str:
    """A counter slot's time, to the millisecond (`kascade.api.times`)."""
    return format_time_precise(datetime.fromtimestamp(epoch_seconds, tz=UTC))
