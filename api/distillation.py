"""The `Distillation` resource: one run of `kascade distill`, like a Job to a CronJob.

A ModelCascade with `spec.distillation` gets one on its schedule (the operator
creates it, owned by the cascade); a user may create one by hand, for a
cascade with `spec.distillation` (a run naming any other cascade is not run: it
is marked Failed with the reason). The operator
runs it as a Kubernetes Job (`kascade.operator.build_distillation`); the run
reports its progress and its result (figures before and after, the promotion
gate's verdict, the model it wrote) into the status itself
(`kascade.distillation.report`). When the gate passes, the operator records
the promotion in the run's status (`Promotion`: the model, and the tier's
`model.uri` it is served in place of) and the tier serves the new model while
its `model.uri` stays that; the cascade's spec is never written
(`kascade.operator.promotion`).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kascade.api.agreement import SEMANTIC_CUTOFF, AnswerMatcher, Judge, OnlineMatcher
from kascade.api.base import StatusModel
from kascade.api.loop import Gate, RunPlacement, Training
from kascade.api.modelcascade import API_VERSION, ObjectMeta, SecretKeyRef
from kascade.api.pre_route import PreRoute
from kascade.api.resources import DNS_LABEL_PATTERN
from kascade.api.times import TimeError, parse_time

DISTILLATION_KIND: Final = "Distillation"
DISTILLATION_PLURAL = "distillations"

# How `kascade distill` ends, as a run's Job reads it (its podFailurePolicy).
REFUSED_EXIT_CODE = 2  # bad data or model, or a status the API server refuses: the same command fails again
TRANSIENT_EXIT_CODE = 3  # the API server could not be reached or was busy: run again (it resumes from the checkpoint)

OUTPUT_IS_NOT_THE_STUDENT = (
    "spec.output must differ from spec.student: a run never writes over the model it starts from"
)
ON_POLICY_NEEDS_A_TEACHER = "spec.training.onPolicyFraction > 0 needs spec.teacherUrl and spec.teacherModel: a teacher server scores the samples"


class DistillationSpec(RunPlacement):
    """One run: which student, taught from what, written where, judged how."""

    cascade: str = Field(
        min_length=1,
        max_length=253,
        description="The ModelCascade (same namespace) that runs it, and whose tier is promoted when the gate passes.",
    )
    tier: str = Field(min_length=1, max_length=40, pattern=DNS_LABEL_PATTERN, description="The cascade's student tier.")
    student: str = Field(
        min_length=1,
        max_length=2048,
        description="The model the run starts from (the tier's serving one): pvc://claim/path, hf://org/name, pkg://…",
    )
    hub_token_secret: SecretKeyRef | None = Field(
        default=None, description="HF_TOKEN for an hf:// student (the tier's)."
    )
    data: str = Field(
        min_length=1,
        max_length=2048,
        description="The escalation log (pvc://claim/path or s3://bucket/prefix) or a dataset .jsonl on a claim.",
    )
    teacher_url: str | None = Field(
        default=None,
        max_length=2048,
        description="A teacher server's OpenAI base URL (the cascade's last tier) that scores on-policy samples.",
    )
    teacher_model: str | None = Field(default=None, max_length=253, description="The model name it serves.")
    credentials_secret: str | None = Field(
        default=None,
        max_length=253,
        description="Secret whose keys become the run's environment (AWS_* for s3:// data).",
    )
    output: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/.+$",
        description="The run's own folder for the new student, as a tier's model.uri serves it: pvc://claim/path.",
    )
    training: Training = Field(default_factory=Training)
    gate: Gate = Field(default_factory=Gate)
    matcher: OnlineMatcher = Field(
        default=AnswerMatcher.exact,
        description="How a held-out answer of the student agrees with the teacher's (the gate's agreement); the "
        "operator sets the cascade's (spec.calibration.matcher, else the task's default).",
    )
    semantic_cutoff: float = Field(
        default=SEMANTIC_CUTOFF,
        gt=0,
        le=1,
        description="matcher semantic: two answers agree when their embeddings' cosine is at least this.",
    )
    judge: Judge | None = Field(
        default=None,
        description="matcher judge: the LLM the run asks (url and model: the cascade's judge.url, else its last tier).",
    )
    pre_route_dimensions: int | None = Field(
        default=None,
        ge=16,
        le=1 << 16,
        description="The student tier's preRoute dimensions: the run refits the pre-route score for the new student "
        "(none: the tier has no preRoute, nothing is refitted).",
    )
    max_kept_skipped: float = Field(
        default=0.05, gt=0, lt=1, description="The refitted pre-route score's goal (the tier's preRoute's)."
    )
    confidence: float = Field(
        default=0.95, gt=0, lt=1, description="The confidence its bound is certified at (the calibration's)."
    )
    log_records: int = Field(
        default=0,
        ge=0,
        description="Escalations the cascade had logged when the run was created (the next counts from it).",
    )

    @model_validator(mode="after")
    def _fits(self) -> DistillationSpec:
        # Restated in CEL in the CRD (`kascade.api.distillation_crd.DISTILLATION_SPEC_RULES`).
        if self.training.on_policy_fraction > 0 and not (self.teacher_url and self.teacher_model):
            raise ValueError(ON_POLICY_NEEDS_A_TEACHER)
        if self.output == self.student:
            raise ValueError(OUTPUT_IS_NOT_THE_STUDENT)
        return self


class DistillationPhase(StrEnum):
    pending = "Pending"  # created; its Job is made, its pod not started
    running = "Running"  # `kascade distill` reported its start
    succeeded = "Succeeded"  # a student was written and judged (the gate may still have failed)
    failed = "Failed"  # no student: the run erred, or its Job failed

    @property
    def finished(self) -> bool:
        return self in (DistillationPhase.succeeded, DistillationPhase.failed)


class Progress(StatusModel):
    step: int = 0
    steps: int = 0
    loss: float | None = None


class Figures(StatusModel):
    """Held-out figures of a student (before: the one the run started from; after: the new one)."""

    answer_agreement: float | None = None
    answer_accuracy: float | None = None
    token_agreement: float | None = None
    loss: float | None = None


class SliceChange(StatusModel):
    """One held-out slice's agreement with the teacher, before and after (a slice: a label, an answer length)."""

    examples: int
    before: float
    after: float
    change: float


class GateVerdict(StatusModel):
    """The promotion gate's verdict on the run's student: the operator promotes only one that passed."""

    passed: bool = False
    gain: float | None = Field(default=None, description="The held-out agreement gain; none: nothing to compare.")
    reasons: list[str] = Field(default_factory=list, description="Each reason it failed.")
    slices: dict[str, SliceChange] = Field(default_factory=dict, description="Every slice's change, judged or not.")
    pre_route: str = Field(
        default="",
        description="The refitted pre-route score: certified and served with the student (status.preRoute), or why "
        "the tier keeps its own; empty when the run refitted none.",
    )


class PromotionReason(StrEnum):
    """Why a run's student was promoted or not: the one list of the codes."""

    promoted = "Promoted"
    gate_failed = "GateFailed"  # the gate's verdict (its reasons in the message)
    run_failed = "RunFailed"  # no student: the run or its Job failed
    student_changed = "StudentChanged"  # the tier serves another model than the one the run was judged against
    spec_refused = "SpecRefused"  # the cascade with the new model would be invalid (its message)
    manual = "Manual"  # the gate passed; spec.distillation.promotion is Manual: a candidate to serve by hand


class Promotion(StatusModel):
    """What the operator did with the run's student: the record a promoted model is served from.

    The operator owns this status, not the cascade's spec, so a GitOps re-apply
    of the manifest leaves it alone; the cascade's `status.distillation` is
    rebuilt from it at every reconcile.
    """

    promoted: bool
    reason: str = Field(description="One of " + ", ".join(r.value for r in PromotionReason) + ".")
    message: str = ""
    previous_model: str | None = Field(
        default=None, description="The model the tier served before (the one the run started from): one step back."
    )
    replaces: str | None = Field(
        default=None,
        description="The tier's model.uri in the cascade's spec when promoted: the new model is served in its place "
        "while model.uri stays this.",
    )
    at: str | None = None
    withdrawn_at: str | None = Field(
        default=None, description="When the promotion stopped applying (for good: it never applies again)."
    )
    withdrawal: str = Field(
        default="", description="Why: model.uri edited (a pin), spec.distillation.promotion Manual, or removed."
    )

    @property
    def in_force(self) -> bool:
        """Promoted and not withdrawn: what the tier serves, while its model.uri is `replaces`."""
        return self.promoted and self.withdrawn_at is None and self.replaces is not None


class DistillationStatus(StatusModel):
    phase: DistillationPhase = DistillationPhase.pending
    job: str | None = None
    message: str = ""
    progress: Progress = Field(default_factory=Progress)
    progress_text: str = Field(default="", description="For kubectl: step/steps.")
    started_at: str | None = None
    finished_at: str | None = None
    examples: int | None = Field(default=None, description="Examples trained on.")
    held_out: int | None = Field(
        default=None, description="Held-out examples the figures and the gate are measured on."
    )
    before: Figures | None = None
    after: Figures | None = None
    gate: GateVerdict | None = None
    gain_text: str = Field(default="", description="For kubectl: the agreement gain.")
    model: str | None = Field(default=None, description="The new student, as a tier's model.uri.")
    pre_route: PreRoute | None = Field(
        default=None,
        description="The tier's pre-route score refitted for the new student, certified on held-out prompts: a "
        "promotion serves it with the model (none: the tier keeps its own).",
    )
    promotion: Promotion | None = None

    @classmethod
    def failed(cls, message: str, at: str) -> DistillationStatus:
        """A run that ended as Failed: why, and when (the pod's report and the operator's ending alike)."""
        return cls(phase=DistillationPhase.failed, finished_at=at, message=message)

    def merge_patch_body(self) -> dict[str, Any]:
        """The fields set here, as a status merge patch writes them (what was not set stays as it is)."""
        return self.model_dump(by_alias=True, exclude_none=True, exclude_unset=True, mode="json")


class Distillation(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    api_version: Literal["kascade.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["Distillation"] = DISTILLATION_KIND
    metadata: ObjectMeta
    spec: DistillationSpec
    status: DistillationStatus | None = None

    @model_validator(mode="after")
    def _creation_is_a_time(self) -> Distillation:
        # The API server writes it; a run whose creation time cannot be read cannot be ordered among the others.
        try:
            _ = self.created_at
        except TimeError as error:
            raise ValueError(f"metadata.creationTimestamp: {error}") from None
        return self

    @property
    def created_at(self) -> datetime | None:
        """`metadata.creationTimestamp`; None for a manifest the API server has not created yet."""
        stamp = (self.metadata.model_extra or {}).get("creationTimestamp")
        return parse_time(stamp) if stamp is not None else None

    @property
    def resource_version(self) -> str | None:
        """`metadata.resourceVersion` as read: a status write over exactly what was read is guarded by it."""
        return (self.metadata.model_extra or {}).get("resourceVersion")

    @property
    def phase(self) -> DistillationPhase:
        """The run's phase; Pending until its status says otherwise."""
        return self.status.phase if self.status is not None else DistillationPhase.pending

    @property
    def promotion(self) -> Promotion | None:
        """The operator's decision about the run's student; None until it is made."""
        return self.status.promotion if self.status is not None else None

    @property
    def decided(self) -> bool:
        """Finished and judged: a run the pod reported Failed is neither while its Job may still retry it."""
        return self.promotion is not None

    @property
    def promoted(self) -> bool:
        """Decided, and its student promoted (whether or not the promotion was withdrawn since)."""
        return self.promotion is not None and self.promotion.promoted
