"""The loop's part of the API: calibration, the escalation log, distillation.

Calibration's goal is implemented offline (`kascade calibrate` reads it and
sets the thresholds in the manifest) and online: with `shadowSampleRate` > 0
the routers measure agreement on live traffic and the operator (or local mode,
in process) moves the thresholds towards the goal
(`kascade.calibration.online`). The escalation log is written by the
routers (`kascade.runtime.escalation.log`). Distillation runs in the cluster:
the operator creates `Distillation` runs from `spec.distillation`
(`kascade.operator.distillation_schedule`) and promotes a student that passes
the gate (`kascade.operator.promotion`). Local mode refuses `spec.distillation`
(distil by hand there with `kascade distill`).

What cannot work is refused by the model and by the CRD's CEL rules
(`kascade.api.crd.SPEC_RULES`) alike, with the messages below: a field that is
accepted and then ignored would be a silent no-op.
"""

from __future__ import annotations

import re
from enum import StrEnum

from croniter import croniter
from pydantic import Field, field_validator, model_validator

from kascade.api.agreement import SEMANTIC_CUTOFF, Judge, OnlineMatcher
from kascade.api.base import SpecModel
from kascade.api.resources import Resources, Toleration

ONLINE_CALIBRATION_HAS_NO_REFERENCES = (
    "spec.calibration.minAccuracy cannot be calibrated online (live traffic has no reference answers): "
    "set shadowSampleRate to 0 and calibrate it offline with `kascade calibrate`, or use minAgreement"
)
ONLINE_CALIBRATION_NEEDS_WHOLE_ANSWERS = (
    "spec.calibration.shadowSampleRate needs whole answers to judge agreement: with router.streaming.mode early "
    "a declined answer is only the prefix that was scored; use mode buffer, or set shadowSampleRate to 0"
)
THRESHOLD_BOUNDS_IN_ORDER = "spec.calibration.minThreshold must not exceed spec.calibration.maxThreshold"
CALIBRATION_NEEDS_A_GOAL = "spec.calibration needs a goal: minAgreement, minAccuracy or maxEscalationRate"
ESCALATION_LOG_NEEDS_A_PLACE = (
    "spec.escalationLog.enabled needs spec.escalationLog.uri: where the records go "
    "(pvc://claim/path or s3://bucket/prefix in a cluster; a folder, file:// or s3:// in local mode)"
)
# Five fields (minute hour day-of-month month day-of-week, as a CronJob's), or one of the @ shorthands.
CRON_PATTERN = r"^(@(yearly|annually|monthly|weekly|daily|hourly)|[^\s]+( [^\s]+){4})$"
DISTILLATION_NEEDS_THE_LOG = (
    "spec.distillation needs spec.escalationLog.enabled with a uri: runs learn from the escalations it keeps"
)
ON_POLICY_NEEDS_A_SCORING_TEACHER = (
    "spec.distillation.training.onPolicyFraction > 0 needs a generative task and a last tier Kascade deploys (vllm or "
    "transformers): its server scores the student's samples by prompt_logprobs, which hosted APIs and classifiers "
    "do not give"
)
STUDENT_MUST_BE_TRAINABLE = (
    "spec.distillation's student tier must be one Kascade deploys (not engine external) with weights a run can "
    "load (hf://, pvc://, pkg:// or a path; not s3://)"
)
DISTILLATION_TIER_NOT_LAST = "spec.distillation.tier must name a tier of the cascade that is not the last"


class Calibration(SpecModel):
    """The quality goal the thresholds are set from, with a finite-sample guarantee.

    Offline, `kascade calibrate` sets the thresholds in the manifest. Online
    (`shadowSampleRate` > 0), routers send that share of accepted requests to
    the last tier as well, and the operator moves each tier's threshold, from
    the one in the spec and within [minThreshold, maxThreshold], to the boldest
    one the samples certify. With no calibration block, or a rate of 0, the
    thresholds in the spec are pinned.
    """

    min_agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Least share of the cascade's answers that agree with what the last tier alone would answer.",
    )
    min_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Least share of correct answers (needs labelled calibration data)."
    )
    max_escalation_rate: float | None = Field(
        default=None, ge=0, le=1, description="Largest share of requests that may reach the last tier."
    )
    confidence: float = Field(
        default=0.95,
        gt=0,
        lt=1,
        description="Probability with which the goal holds on new traffic like the calibration data.",
    )
    shadow_sample_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=(
            "Share of requests whose agreement with the last tier is measured online: accepted ones are also "
            "sent to the last tier (off the response path), escalated ones already have its answer. 0: offline only."
        ),
    )
    matcher: OnlineMatcher | None = Field(
        default=None,
        description=(
            "How agreement is judged (online calibration, the escalation log's agreed, the promotion gate); "
            "default: label for classify; for chat and completion, judge, or semantic where no judge can be asked "
            "(an external last tier and no judge.url)."
        ),
    )
    semantic_cutoff: float = Field(
        default=SEMANTIC_CUTOFF,
        gt=0,
        le=1,
        description="matcher semantic: two answers agree when their embeddings' cosine is at least this.",
    )
    judge: Judge = Field(
        default_factory=lambda: Judge(),
        description="matcher judge: who judges and how many judge calls may be in flight.",
    )
    min_samples: int = Field(
        default=200, ge=10, le=1_000_000, description="Samples a tier needs before its threshold moves."
    )
    min_threshold: float = Field(default=0.0, ge=0, le=1, description="Online calibration never goes below this.")
    max_threshold: float = Field(
        default=1.0, ge=0, le=1, description="Online calibration never goes above this (the safest it may be)."
    )
    hysteresis: float = Field(
        default=0.05,
        ge=0,
        le=0.5,
        description="A threshold moves down (bolder) only by more than this; it moves up (safer) at once.",
    )
    shadow_concurrency: int = Field(
        default=4, ge=1, le=256, description="Shadow calls in flight per router at most; beyond, a sample is skipped."
    )

    @model_validator(mode="after")
    def _has_a_goal(self) -> Calibration:
        # Restated in CEL in the CRD (`kascade.api.crd.CALIBRATION_RULES`).
        if self.min_agreement is None and self.min_accuracy is None and self.max_escalation_rate is None:
            raise ValueError(CALIBRATION_NEEDS_A_GOAL)
        if self.shadow_sample_rate and self.min_accuracy is not None:
            raise ValueError(ONLINE_CALIBRATION_HAS_NO_REFERENCES)
        if self.min_threshold > self.max_threshold:
            raise ValueError(THRESHOLD_BOUNDS_IN_ORDER)
        return self

    @property
    def online(self) -> bool:
        return self.shadow_sample_rate > 0


class EscalationLog(SpecModel):
    """Keeps every escalated request with the answering tier's answer, token ids and top-k logprobs (teacher data).

    Written by each router off the response path, in Parquet segments
    (`kascade.runtime.escalation.log`); read by `kascade log` and `kascade distill`.
    """

    enabled: bool = False
    uri: str | None = Field(
        default=None,
        max_length=2048,
        description=(
            "Where the segments go: pvc://claim/path or s3://bucket/prefix in a cluster; "
            "a folder, file:// or s3:// in local mode."
        ),
    )
    credentials_secret: str | None = Field(
        default=None,
        max_length=253,
        description="Secret whose keys become the routers' environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, …) for s3://.",
    )
    retention_days: int = Field(default=30, ge=1, description="Segments older than this are deleted by the writer.")
    redact: list[str] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Regular expressions (Python syntax) removed from prompts and answers before they are kept; "
            "e-mail addresses, phone numbers and API-key-like strings are always removed."
        ),
    )
    top_logprobs: int = Field(default=5, ge=0, le=20, description="Teacher logprobs kept per token.")

    @field_validator("redact")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for index, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"redact[{index}] {pattern!r} is not a regular expression: {error}") from None
        return patterns

    @model_validator(mode="after")
    def _has_a_place(self) -> EscalationLog:
        # Restated in CEL in the CRD (`kascade.api.crd.SPEC_RULES`).
        if self.enabled and not self.uri:
            raise ValueError(ESCALATION_LOG_NEEDS_A_PLACE)
        return self


class DistillationLoss(StrEnum):
    """The divergence between teacher and student (`kascade.distillation.losses`)."""

    forward_kl = "forwardKL"  # KL(teacher ‖ student): mode-covering, Hinton's soft targets
    reverse_kl = "reverseKL"  # KL(student ‖ teacher): mode-seeking
    jsd = "generalizedJSD"  # beta·KL(teacher ‖ M) + (1 − beta)·KL(student ‖ M), M their beta-mixture


class Training(SpecModel):
    """How the student learns and is measured; `kascade distill` takes each field as an option (`--batch-size`)."""

    loss: DistillationLoss = Field(default=DistillationLoss.forward_kl, description="The divergence to the teacher.")
    temperature: float = Field(default=2.0, gt=0, le=100, description="Softens teacher and student alike.")
    alpha: float = Field(
        default=0.5, ge=0, le=1, description="Weight of the teacher's soft term; 1 - alpha: hard labels."
    )
    beta: float = Field(default=0.5, ge=0, le=1, description="Generalized JSD interpolation.")
    steps: int = Field(default=200, ge=1, le=1_000_000, description="Optimizer steps.")
    batch_size: int = Field(default=8, ge=1, le=4096, description="Examples per step.")
    learning_rate: float = Field(
        default=2e-4, gt=0, le=1, description="Peak learning rate (linear warm-up, then cosine decay)."
    )
    warmup_steps: int = Field(default=10, ge=0, le=1_000_000, description="Steps of the linear warm-up.")
    lora: bool = Field(default=True, description="LoRA adapters merged into the saved model; false: full fine-tuning.")
    lora_rank: int = Field(default=16, ge=1, le=1024, description="Rank of the LoRA adapters.")
    on_policy_fraction: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of steps on the student's own samples, scored by the teacher (in process or its server).",
    )
    teacher_top_k: int = Field(
        default=20,
        ge=1,
        le=256,
        description="Entries per token a teacher in process or behind a server keeps (a vLLM server answers at "
        "most its --max-logprobs, 20 by default).",
    )
    max_length: int = Field(default=512, ge=8, le=1_000_000, description="Most tokens per example, prompt and answer.")
    max_new_tokens: int = Field(
        default=64, ge=1, le=100_000, description="Length of on-policy samples and of generated held-out answers."
    )
    held_out: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Share of the examples kept apart to measure the student and judge the gate (a stable hash of each).",
    )
    eval_every: int = Field(
        default=50, ge=1, le=1_000_000, description="Steps between held-out measurements (and checkpoints)."
    )
    eval_generate: int = Field(
        default=32,
        ge=0,
        le=1_000_000,
        description="Held-out answers generated to measure final-answer agreement (the gate's figure).",
    )


class Gate(SpecModel):
    """The promotion gate, on held-out escalations: the new student against the one it started from."""

    min_agreement_gain: float = Field(default=0.01, ge=0, le=1, description="Least gain in held-out agreement.")
    slice_tolerance: float = Field(default=0.02, ge=0, le=1, description="Most any held-out slice may lose.")
    min_slice_examples: int = Field(default=20, ge=1, le=1_000_000, description="Smaller slices are shown, not judged.")


class RunPlacement(SpecModel):
    """Where a distillation run's pod runs and what it needs (GPU taints are tolerated for GPU runs)."""

    resources: Resources = Field(default_factory=lambda: Resources(gpus=1), description="What a run's pod needs.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    node_selector: dict[str, str] = Field(
        default_factory=dict, max_length=32, description="Node labels a run's pod must run on (with resources.gpuType)."
    )


class PromotionMode(StrEnum):
    """Whether a student that passes the gate is served without a person in the loop."""

    automatic = "Automatic"  # the tier serves it in place of its model.uri (recorded in the run, never in spec)
    manual = "Manual"  # the tier serves its model.uri; a passed run is a candidate you serve by setting model.uri


class DistillationPolicy(RunPlacement):
    """When a better student is distilled from the escalation log, and when it replaces the serving one.

    The operator creates a `Distillation` (a Job running `kascade distill`) for
    the student tier when the schedule is due (none: at once) and at least
    `minSamples` escalations were logged since the last run; one run at a time.
    A run that passes the gate is promoted: its run records the promotion and
    the tier serves the new student in place of its `model.uri` for as long as
    `model.uri` stays what it was promoted over. The operator never writes the
    spec, so a re-apply of the manifest (Helm, Argo CD, kubectl) keeps it.
    """

    schedule: str | None = Field(
        default=None,
        max_length=128,
        pattern=CRON_PATTERN,
        description="Cron schedule (5 fields, UTC) of the looks for new records; none: look at every reconcile.",
    )
    min_samples: int = Field(default=1000, ge=1, description="New logged escalations a run needs since the last one.")
    tier: str | None = Field(
        default=None, max_length=40, description="The student tier (not the last); default: the first tier."
    )
    output_uri: str = Field(
        max_length=2048,
        pattern=r"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/.*)?$",
        description="Where students are written, one folder per run: pvc://claim/path (the tier mounts it to serve them).",
    )
    training: Training = Field(default_factory=Training, description="How each run trains the student.")
    gate: Gate = Field(default_factory=Gate, description="What a run's student must show to be promoted.")
    history_limit: int = Field(default=3, ge=1, le=100, description="Finished runs kept; older ones are deleted.")
    promotion: PromotionMode = Field(
        default=PromotionMode.automatic,
        description=(
            "Automatic: a run that passes the gate is served in place of the tier's model.uri. Manual: the tier "
            "serves its model.uri (setting Manual takes back the promotion in effect: the rollback); runs are "
            "still judged, and you serve a passed one by setting model.uri to its model."
        ),
    )

    @field_validator("schedule")
    @classmethod
    def _is_cron(cls, schedule: str | None) -> str | None:
        if schedule is not None and not croniter.is_valid(schedule):
            raise ValueError(f"schedule {schedule!r} is not a cron expression (5 fields, e.g. '0 3 * * *')")
        return schedule
