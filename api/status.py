"""The observed state of a ModelCascade: `.status`, written by the operator and, slot by slot, by the routers.

Status types keep unknown fields (`StatusModel`): an older operator must not
choke on what a newer one wrote. The router counter slots and their running
sum are typed in `kascade.api.counters`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kascade.api.base import StatusModel
from kascade.api.counters import CounterSlot, RetiredCounters, RetiredProcess


class Condition(StatusModel):
    """A Kubernetes-style condition: Ready, TiersReady, RouterReady, Calibrated, Degraded."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class TierStatus(StatusModel):
    name: str
    ready_replicas: int = 0
    replicas: int = 0
    ready: bool | None = Field(
        default=None,
        description=(
            "Set for tiers without pods (engine external) and for tiers their autoscaler scaled to zero "
            "(the routers skip them); unset: ready when a replica is ready."
        ),
    )
    threshold: float | None = Field(default=None, description="The threshold in force (calibrated or declared).")
    ready_gpus: int = Field(
        default=0, description="GPUs of the ready replicas at the operator's last look: readyReplicas x resources.gpus."
    )
    per_gpu_hour: float = Field(
        default=0.0, description="The tier's price.perGpuHour at the last look: what the GPU-hours since cost."
    )
    gpu_hours: float = Field(
        default=0.0, description="GPU-hours the tier's ready replicas held, since cost.gpuHoursSince (never goes down)."
    )
    reservation_cost: float = Field(default=0.0, description="Those GPU-hours, each at the price in force then.")


class Traffic(StatusModel):
    requests: int = 0
    answered_by: dict[str, int] = Field(default_factory=dict)
    escalations: int = 0
    escalation_rate: float = 0.0
    errors: int = 0
    escalations_logged: int = Field(default=0, description="Escalations queued for the escalation log.")
    escalation_log_dropped: int = Field(default=0, description="Escalations the log dropped (queue full, writer lost).")
    shadow_calls: int = Field(
        default=0, description="Accepted requests also sent to the last tier (online calibration)."
    )
    judge_calls: int = Field(default=0, description="Calls to the LLM judge (matcher judge), failed ones included.")
    judge_failures: int = Field(default=0, description="Judge calls that gave no verdict (the sample lost).")
    judge_skipped: int = Field(default=0, description="Agreement questions not asked: the judge was at concurrency.")
    routed_past: dict[str, int] = Field(
        default_factory=dict, description="Requests that skipped each tier on its pre-route score (tiers[].preRoute)."
    )
    probe_calls: int = Field(
        default=0, description="Skipped requests still asked of the skipped tier, off the response path (pre-routing)."
    )
    skipped_no_replica: dict[str, int] = Field(
        default_factory=dict,
        description="Requests that skipped each tier scaled to zero: it had no ready replica (autoscaling).",
    )
    cold_start_waits: dict[str, int] = Field(
        default_factory=dict, description="Requests that waited for the last tier, scaled to zero, to come back."
    )
    cold_start_wait_seconds: float = Field(default=0.0, description="The seconds they waited, added up.")
    admitted: dict[str, int] = Field(
        default_factory=dict, description="Requests given a slot at each tier (admission control), waiting or not."
    )
    rejected: dict[str, int] = Field(
        default_factory=dict,
        description="Requests refused with 429 at each tier, the first they asked: no slot in time.",
    )
    rejected_at_escalation: dict[str, int] = Field(
        default_factory=dict,
        description="Escalated requests refused with 503 at each tier: no slot (onEscalationFull).",
    )
    kept_under_load: dict[str, int] = Field(
        default_factory=dict,
        description="Escalated requests answered by the tier before, because each tier had no slot (keepSmall).",
    )


class Cost(StatusModel):
    """Usage cost (per token, counted by the routers) beside reservation cost (per GPU-hour, integrated by the operator).

    Usage: `actual` against `baseline` (the last tier alone, per token) gives
    `saved`. Reservation: `reservationCost` is the bill of every tier's ready
    GPUs; `reservationBaseline` is the last tier's share of it. Both: `netSaved`
    is what the cascade saves once its smaller tiers' GPUs are paid for.
    """

    currency: str = "USD"
    actual: float = Field(default=0.0, description="Usage-based cost, wasted small-tier calls of escalations included.")
    baseline: float = Field(default=0.0, description="What the last tier alone would have cost.")
    saved: float = Field(default=0.0, description="baseline - actual.")
    saved_percent: float = Field(default=0.0, description="100 * saved / baseline.")
    shadow_cost: float = Field(default=0.0, description="What shadow calls cost (online calibration), in actual.")
    judge_cost: float = Field(default=0.0, description="What the LLM judge's calls cost (matcher judge), in actual.")
    probe_cost: float = Field(default=0.0, description="What pre-routing's probe calls cost, in actual.")
    routed_past_saved: float = Field(
        default=0.0,
        description="What the calls skipped by pre-routing would have cost (each at its tier's mean call cost "
        "then): an estimate, already in saved.",
    )
    estimated_baseline: float | None = Field(
        default=None,
        description="baseline with the last tier's token counts measured by shadow samples (an estimate: it moves "
        "both ways as samples come; absent before 30 samples).",
    )
    estimated_saved: float | None = Field(default=None, description="estimatedBaseline - actual.")
    last_tier_output_ratio: float | None = Field(
        default=None,
        description="The last tier's output tokens per output token of the accepted answers (shadow samples).",
    )
    gpu_hours: float = Field(default=0.0, description="GPU-hours of every tier's ready replicas, since gpuHoursSince.")
    reservation_cost: float = Field(
        default=0.0, description="The reserved bill: each tier's GPU-hours at its price.perGpuHour."
    )
    reservation_baseline: float = Field(
        default=0.0,
        description=(
            "The last tier's share of reservationCost: what reserving the last tier alone, at the size it runs, "
            "cost. How much smaller the cascade lets it be is not observed."
        ),
    )
    net_saved: float = Field(
        default=0.0,
        description=(
            "(baseline + reservationBaseline) - (actual + reservationCost): saved, less what the tiers before "
            "the last reserved. Positive: the smaller tiers pay for their GPUs."
        ),
    )
    net_saved_percent: float = Field(default=0.0, description="100 * netSaved / (baseline + reservationBaseline).")
    gpu_hours_since: str | None = Field(default=None, description="When the operator first counted GPU-hours.")
    gpu_hours_until: str | None = Field(
        default=None, description="The operator's last look at the ready replicas: GPU-hours count up to it."
    )
    since: str | None = None

    def settled(self) -> Cost:
        """A copy with saved, savedPercent, netSaved and netSavedPercent computed from the amounts."""
        saved = self.baseline - self.actual
        whole_baseline = self.baseline + self.reservation_baseline
        net = whole_baseline - (self.actual + self.reservation_cost)
        return self.model_copy(
            update={
                "saved": saved,
                "saved_percent": 100.0 * saved / self.baseline if self.baseline > 0 else 0.0,
                "net_saved": net,
                "net_saved_percent": 100.0 * net / whole_baseline if whole_baseline > 0 else 0.0,
            }
        )


RESERVATION_FIELDS = ("gpu_hours", "reservation_cost", "reservation_baseline", "gpu_hours_since", "gpu_hours_until")
"""The fields of `Cost` the operator integrates from the tiers' ready GPUs (`kascade.operator.reservation`)."""


class BinCounts(StatusModel):
    """Cumulative samples and agreements of one tier, per score bin edge (`kascade.calibration.online`)."""

    samples: dict[str, int] = Field(default_factory=dict)
    agreed: dict[str, int] = Field(default_factory=dict)


class TierCalibration(StatusModel):
    """Where online calibration holds one tier's threshold, and what it measured there."""

    name: str
    threshold: float = Field(description="The threshold in force: routers pick it up without a restart.")
    declared: float = Field(description="The spec's threshold: the starting point (a new one restarts from it).")
    model: str | None = Field(
        default=None, description="The tier's model.uri; a new one (a promotion) restarts from declared."
    )
    samples: int = Field(default=0, description="Samples in the sliding window the threshold was chosen on.")
    agreement: float | None = Field(
        default=None, description="The cascade's agreement with the last tier at the threshold in force (window)."
    )
    agreement_low: float | None = Field(default=None, description="Its interval at the goal's confidence.")
    agreement_high: float | None = None
    escalation_rate: float | None = Field(default=None, description="Share of the window this tier escalated.")
    met: bool = False
    reason: str = Field(default="", description="CollectingSamples, GoalMet or GoalNotMet.")
    message: str = ""
    last_moved: str | None = Field(default=None, description="When the threshold last moved (RFC 3339).")
    window_older: BinCounts = Field(default_factory=BinCounts, description="Cumulative counts at the window's start.")
    window_newer: BinCounts = Field(default_factory=BinCounts, description="Cumulative counts at the next start.")


class CalibrationStatus(StatusModel):
    """Online calibration (spec.calibration.shadowSampleRate > 0): the goal, and each scored tier."""

    goal: str = ""
    confidence: float = 0.95
    tiers: list[TierCalibration] = Field(default_factory=list)


class PromotedModel(StatusModel):
    """The promotion in effect: the model a student tier serves in place of its model.uri."""

    run: str = Field(description="The Distillation whose status records the promotion (kept while it is in effect).")
    model: str = Field(description="The model served.")
    replaces: str = Field(
        description="The tier's model.uri it is served in place of: set model.uri to anything else to pin that one."
    )
    at: str | None = None


class DistillationSummary(StatusModel):
    """spec.distillation at work: the student tier, what it serves and why, the last run, what the next one waits for.

    Rebuilt from the cascade's Distillation runs at every reconcile: a status
    lost (a restore from a backup without status) comes back from them.
    """

    tier: str = Field(description="The student tier.")
    serving: str = Field(description="The model the tier serves now: the promotion in effect's, else its model.uri.")
    spec_model: str | None = Field(default=None, description="The tier's model.uri in the spec.")
    promoted: PromotedModel | None = Field(default=None, description="The promotion in effect, if any.")
    message: str = Field(
        default="", description="Why the tier serves what it serves: a promotion in effect, or why none applies."
    )
    rollback_target: str | None = Field(
        default=None,
        description="The model the promotion in effect replaced (served before it): spec.distillation.promotion "
        "Manual serves model.uri again; model.uri set to this serves this.",
    )
    last_promoted: str | None = Field(default=None, description="The last run whose student was promoted.")
    last_run: str | None = None
    last_run_phase: str | None = None
    last_decision: str | None = Field(default=None, description="Promoted, or why the last finished run was not.")
    runs: int = Field(
        default=0, description="Runs kept: historyLimit decided ones, the last promoted one, and the one running."
    )
    waiting: str = Field(default="", description="Why no run starts now.")


class StatusSummary(StatusModel):
    """Human-readable figures for `kubectl get`; computed by `kascade.api.summary.summarize_status`."""

    tiers: str = Field(default="", description="Ready tiers out of all tiers, e.g. 2/2.")
    escalation: str = Field(default="", description="Share of requests that escalated, e.g. 12.5%.")
    saved: str = Field(default="", description="Money saved against the last tier alone, e.g. USD 1.23 (45.0%).")
    reserved: str = Field(default="", description="The reserved bill and its GPU-hours, e.g. USD 96.00 (120.0 GPU-h).")
    net_saved: str = Field(
        default="", description="Saved once the smaller tiers' GPUs are paid, e.g. USD -3.20 (-1.5%)."
    )


class ModelCascadeStatus(StatusModel):
    """Observed state, written by the operator (router replicas write their own counter slots)."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    endpoint: str | None = Field(default=None, description="The cascade's OpenAI-compatible base URL.")
    tiers: list[TierStatus] = Field(default_factory=list)
    traffic: Traffic = Field(default_factory=Traffic)
    cost: Cost = Field(default_factory=Cost)
    summary: StatusSummary = Field(default_factory=StatusSummary)
    calibration: CalibrationStatus | None = Field(
        default=None, description="Online calibration: thresholds in force and what they were chosen on."
    )
    distillation: DistillationSummary | None = Field(
        default=None, description="Scheduled distillation and promotion (spec.distillation)."
    )
    replica_counters: dict[str, CounterSlot] = Field(
        default_factory=dict,
        description="One slot per router process (keyed by processId): its absolute /stats snapshot and pod.",
    )
    retired_counters: RetiredCounters = Field(
        default_factory=RetiredCounters,
        description="Running sum of every retired router process: restarts and scale-downs lose nothing.",
    )
    retired_processes: dict[str, RetiredProcess] = Field(
        default_factory=dict,
        description="What each recently retired process already contributed, so a late write is counted once.",
    )


REPLICA_COUNTERS = "replicaCounters"
"""The status field of the routers' slots, as written on the wire (routers patch it directly)."""
assert ModelCascadeStatus.model_fields["replica_counters"].alias == REPLICA_COUNTERS
