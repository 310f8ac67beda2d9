"""The router counter slots of a ModelCascade's status, and the running sum of retired ones.

Each router process serves its ledger's absolute totals on `/stats` and writes
them, with its pod's name, into `status.replicaCounters[<processId>]`: a
`CounterSlot`. The operator folds the slots into `status.traffic` and
`status.cost` (`kascade.operator.counters`); the figures of a retired process
are added once into `status.retiredCounters` (`RetiredCounters`), and what was
credited for it is remembered in `status.retiredProcesses` (`RetiredProcess`).

Like every status type, in Python they keep unknown fields (an older operator
must not choke on what a newer router writes); the CRD schema describes every
field, so the API server prunes an unknown one, as it does everywhere else in
the resource: a new field ships with its regenerated CRD. Their figures are
strict: a count is a non-negative integer and an amount a non-negative number,
in pydantic and in the CRD schema alike, so the API server refuses a malformed
slot.

Room to grow: the figures the fold adds up live in `CounterFigures`, and its
arithmetic goes field by field, so a figure added there (and filled in by
`CounterSlot.figures`) is summed, credited and retired with no change to the
fold. A new section of a slot (shadow-sample outcomes for calibration,
escalation-log counts) is a new field of `CounterSlot` with a default, so that
slots written before it still read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Self

from pydantic import BeforeValidator, Field

from kascade.api.base import StatusModel

CURRENCY_PATTERN = r"^[A-Z]{3}$"


def _json_number(value: Any) -> Any:
    """Refuse what pydantic's lax mode would convert: "5" and true are no counts (the CRD refuses them too)."""
    if isinstance(value, str | bool | bytes):
        raise ValueError(f"{value!r} is not a number")
    return value


# How many times something happened.
Count = Annotated[int, Field(ge=0), BeforeValidator(_json_number)]
# Money (in the slot's currency) or seconds: added up, never negative.
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False), BeforeValidator(_json_number)]


class LoopCounts(StatusModel):
    """What online calibration and pre-routing count, in a router's slot and in the fold alike."""

    shadow_calls: Count = Field(default=0, description="Shadow calls to the last tier (online calibration).")
    shadow_cost: Amount = Field(default=0.0, description="What they cost (included in cost.actual).")
    judge_calls: Count = Field(default=0, description="Calls to the LLM judge (matcher judge), failed ones included.")
    judge_cost: Amount = Field(default=0.0, description="What they cost (included in cost.actual).")
    judge_failures: Count = Field(
        default=0, description="Judge calls that gave no verdict (an error, no logprobs, neither yes nor no)."
    )
    judge_skipped: Count = Field(
        default=0, description="Agreement questions not asked: judge.concurrency calls were in flight already."
    )
    calibration_samples: dict[str, Count] = Field(
        default_factory=dict, description="Agreement samples per tier and score bin (`<tier>@<bin edge>`)."
    )
    calibration_agreed: dict[str, Count] = Field(
        default_factory=dict, description="Of those, the ones that agreed with the last tier."
    )
    baseline_tokens: dict[str, Count] = Field(
        default_factory=dict,
        description="Token counts that correct the savings baseline (`baseline_estimate.estimated_baseline`).",
    )
    routed_past: dict[str, Count] = Field(
        default_factory=dict, description="Requests that skipped each tier on its pre-route score (tiers[].preRoute)."
    )
    routed_past_saved: Amount = Field(
        default=0.0,
        description="What the skipped calls would have cost, estimated at each tier's mean call cost then "
        "(already out of cost.actual).",
    )
    probe_calls: Count = Field(
        default=0, description="Skipped requests still asked of the skipped tier, off the response path."
    )
    probe_cost: Amount = Field(default=0.0, description="What they cost (included in cost.actual).")
    skipped_no_replica: dict[str, Count] = Field(
        default_factory=dict,
        description="Requests that skipped each tier scaled to zero: it had no ready replica (autoscaling).",
    )
    cold_start_waits: dict[str, Count] = Field(
        default_factory=dict, description="Requests that waited for the last tier, scaled to zero, to come back."
    )
    cold_start_wait_seconds: Amount = Field(default=0.0, description="The seconds they waited, added up.")
    admitted: dict[str, Count] = Field(
        default_factory=dict, description="Requests given a slot at each tier (admission control), waiting or not."
    )
    rejected: dict[str, Count] = Field(
        default_factory=dict,
        description="Requests refused with 429 at each tier, the first they asked: no slot in time.",
    )
    rejected_at_escalation: dict[str, Count] = Field(
        default_factory=dict,
        description="Escalated requests refused with 503 at each tier: no slot (onEscalationFull).",
    )
    kept_under_load: dict[str, Count] = Field(
        default_factory=dict,
        description="Escalated requests answered by the tier before, because each tier had no slot (keepSmall).",
    )


class CounterFigures(LoopCounts):
    """The cumulative figures of one router process, or of many added up.

    Every field is a `Count`, an `Amount`, or counts per name (`answered_by`):
    the arithmetic below walks the fields, so a figure added here needs no code.
    """

    requests: Count = Field(default=0, description="Client requests, failed ones included.")
    failed: Count = Field(default=0, description="Requests no tier answered.")
    escalations: Count = Field(default=0, description="Requests passed on to a larger tier.")
    answered_by: dict[str, Count] = Field(default_factory=dict, description="Requests answered, per tier.")
    actual: Amount = Field(default=0.0, description="Usage cost, wasted small-tier calls included.")
    baseline: Amount = Field(default=0.0, description="What the last tier alone would have cost.")
    escalations_logged: Count = Field(default=0, description="Escalations queued for the escalation log.")
    escalation_log_dropped: Count = Field(
        default=0,
        description="Escalations the log dropped: its queue was full, its writer was lost, or storage was down at a stop.",
    )

    def plus(self, other: CounterFigures) -> Self:
        """Figure by figure, the sum."""
        return self._combine(other, lambda mine, theirs: mine + theirs, names_of_both=True)

    def beyond(self, credit: CounterFigures) -> Self:
        """What these figures count beyond `credit`, figure by figure, never below 0."""
        return self._combine(credit, lambda mine, theirs: max(mine - theirs, 0), names_of_both=False)

    def at_least(self, other: CounterFigures) -> Self:
        """Figure by figure, the larger."""
        return self._combine(other, max, names_of_both=True)

    def _combine(self, other: CounterFigures, combine: Callable[[Any, Any], Any], *, names_of_both: bool) -> Self:
        values: dict[str, Any] = {}
        for name in CounterFigures.model_fields:
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, Mapping):
                names = [*mine, *(key for key in theirs if key not in mine)] if names_of_both else list(mine)
                values[name] = {key: combine(mine.get(key, 0), theirs.get(key, 0)) for key in names}
            else:
                values[name] = combine(mine, theirs)
        # Validated again: an amount combined with 0 comes back a float, and no figure goes negative.
        return self.model_validate({**self.model_dump(), **values})


class TierCounters(StatusModel):
    """What one router process sent to one tier."""

    calls: Count = 0
    errors: Count = Field(default=0, description="Calls that failed.")
    input_tokens: Count = 0
    output_tokens: Count = 0
    cost: Amount = 0.0
    latency_seconds_sum: Amount = Field(default=0.0, description="Summed latency of the calls, failed ones included.")


class SlotCost(StatusModel):
    """A slot's cost: `actual` paid, the all-last-tier `baseline`, and what that saved (negative: lost)."""

    actual: Amount = 0.0
    baseline: Amount = 0.0
    saved: float = Field(default=0.0, allow_inf_nan=False, description="baseline - actual.")
    saved_percent: float = Field(default=0.0, allow_inf_nan=False, description="100 * saved / baseline.")


class CounterSlot(LoopCounts):
    """One router process's absolute ledger totals: its `/stats` answer, and its slot in `status.replicaCounters`.

    Totals only ever grow within a process, so writing the same slot again
    counts nothing twice; a restarted process writes a new slot under a new id.
    """

    process_id: str | None = Field(default=None, max_length=253, description="Names the slot; new at each start.")
    started_at: str | None = Field(default=None, max_length=64, description="When the process started (RFC 3339).")
    updated_at: str | None = Field(default=None, max_length=64, description="Its last recorded request (RFC 3339).")
    currency: str | None = Field(default=None, pattern=CURRENCY_PATTERN, description="ISO 4217 code of the amounts.")
    requests: Count = 0
    failed: Count = 0
    escalations: Count = 0
    answered_by: dict[str, Count] = Field(default_factory=dict)
    tiers: dict[str, TierCounters] = Field(default_factory=dict)
    cost: SlotCost = Field(default_factory=SlotCost)
    escalations_logged: Count = Field(default=0, description="Escalations queued for the escalation log.")
    escalation_log_dropped: Count = Field(
        default=0, description="Escalations the log dropped (queue full, writer lost)."
    )
    pod: str | None = Field(
        default=None, max_length=253, description="The router pod that wrote the slot (absent on /stats)."
    )

    def figures(self) -> CounterFigures:
        """The figures the fold adds up."""
        return CounterFigures(
            requests=self.requests,
            failed=self.failed,
            escalations=self.escalations,
            answered_by=self.answered_by,
            actual=self.cost.actual,
            baseline=self.cost.baseline,
            escalations_logged=self.escalations_logged,
            escalation_log_dropped=self.escalation_log_dropped,
            **{name: getattr(self, name) for name in LoopCounts.model_fields},
        )

    def to_wire(self) -> dict[str, Any]:
        """The JSON form: camelCase keys; fields never set (a partial slot) and unset values left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)


class RetiredCounters(CounterFigures):
    """The running sum of every retired router process: restarts and scale-downs lose nothing."""

    currency: str | None = Field(
        default=None, pattern=CURRENCY_PATTERN, description="Currency of the last retired slot."
    )
    since: str | None = Field(default=None, max_length=64, description="When the earliest retired process started.")
    processes: Count = Field(default=0, description="How many processes were retired.")


class RetiredProcess(CounterFigures):
    """What one recently retired process was credited with, so that a late write of its slot counts once."""

    pod: str | None = Field(default=None, max_length=253)
    retired_at: str | None = Field(default=None, max_length=64, description="When its slot was retired (RFC 3339).")
