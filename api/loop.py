"""The loop's part of the API: calibration, the escalation log, distillation.

Calibration's goal is implemented offline (`kascade calibrate` reads it and
sets the thresholds in the manifest) and online: with `shadowSampleRate` > 0
the routers measure agreement on live traffic and the operator (or local mode,
in process) moves the thresholds towards the goal
(`kascade.evaluation.online_calibration`). The escalation log is implemented
(the router writes it: `kascade.runtime.escalation_log`). Distillation in the
cluster is declared, not implemented yet (`kascade distill` trains from the log
by hand).

The types are the contract the coming issues implement (evaluation and
calibration, the escalation log and distillation, the loop in the cluster).
Until a part is implemented, a cascade that sets it is refused, by the model
(`refuse_what_is_not_implemented`) and by the CRD's CEL rules
(`kascade.api.crd.SPEC_RULES`), with the messages below: a field that is
accepted and then ignored would be a silent no-op. The issue that implements a
part removes its refusal.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from kascade.api.base import SpecModel

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
NOT_IMPLEMENTED_DISTILLATION = (
    "spec.distillation is not implemented in this version of Kascade (scheduled distillation in the cluster): "
    "remove it, and distil from the escalation log by hand with `kascade distill`"
)


def refuse_what_is_not_implemented(distillation: DistillationPolicy | None) -> None:
    """Raise ValueError, with the message the CRD's rule gives too, for a part that is set but not implemented."""
    if distillation is not None:
        raise ValueError(NOT_IMPLEMENTED_DISTILLATION)


class AgreementMatcher(StrEnum):
    """How online calibration decides that a tier's answer agrees with the last tier's (`evaluation.matchers`)."""

    label = "label"  # the same class label
    number = "number"  # the same final number
    exact = "exact"  # the same text, whitespace collapsed


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
        default=None, ge=0, le=1,
        description="Least share of the cascade's answers that agree with what the last tier alone would answer.",
    )  # fmt: skip
    min_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Least share of correct answers (needs labelled calibration data)."
    )
    max_escalation_rate: float | None = Field(
        default=None, ge=0, le=1, description="Largest share of requests that may reach the last tier."
    )
    confidence: float = Field(
        default=0.95, gt=0, lt=1,
        description="Probability with which the goal holds on new traffic like the calibration data.",
    )  # fmt: skip
    shadow_sample_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=(
            "Share of requests whose agreement with the last tier is measured online: accepted ones are also "
            "sent to the last tier (off the response path), escalated ones already have its answer. 0: offline only."
        ),
    )
    matcher: AgreementMatcher | None = Field(
        default=None, description="How agreement is judged online; default: label for classify, exact otherwise."
    )
    min_samples: int = Field(
        default=200, ge=10, le=1_000_000, description="Samples a tier needs before its threshold moves."
    )
    min_threshold: float = Field(default=0.0, ge=0, le=1, description="Online calibration never goes below this.")
    max_threshold: float = Field(
        default=1.0, ge=0, le=1, description="Online calibration never goes above this (the safest it may be)."
    )
    hysteresis: float = Field(
        default=0.05, ge=0, le=0.5,
        description="A threshold moves down (bolder) only by more than this; it moves up (safer) at once.",
    )  # fmt: skip
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
    (`kascade.runtime.escalation_log`); read by `kascade log` and `kascade distill`.
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
    forward_kl = "forwardKL"
    reverse_kl = "reverseKL"
    jsd = "generalizedJSD"


class DistillationPolicy(SpecModel):
    """When a better student is distilled from the escalation log. Not implemented yet: refused when set."""

    schedule: str | None = Field(default=None, description="Cron schedule of distillation runs.")
    min_samples: int = Field(default=1000, ge=1)
    loss: DistillationLoss = DistillationLoss.forward_kl
    temperature: float = Field(default=2.0, gt=0)
    alpha: float = Field(default=0.5, ge=0, le=1)
    beta: float = Field(default=0.5, ge=0, le=1, description="Generalized JSD interpolation.")
    on_policy_fraction: float = Field(default=0.0, ge=0, le=1)
    output_uri: str | None = Field(default=None, max_length=2048, description="Where distilled students are written.")
    min_agreement_gain: float = Field(
        default=0.01, ge=0, le=1, description="Promotion gate: least gain in agreement on held-out escalations."
    )
