"""Pydantic models of the `ModelCascade` custom resource (kascade.dev/v1alpha1).

These types are the contract: the CRD YAML in `crds/` is generated from them,
the operator parses resources with them and local mode runs them. They import
nothing of kopf or kubernetes. The status types live in `kascade.api.status`
(the router counters in `kascade.api.counters`) and are imported from here too.

Field names are camelCase on the wire (Kubernetes convention) and snake_case in
Python; `extra="forbid"` so a misspelt field is an error, not a silent no-op.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kascade.api.accept import (  # noqa: F401 - the accept rule's types are imported from here too
    CLASSIFY_FEATURES,
    CLASSIFY_METHODS,
    EARLY_MODE_SCORES_A_PREFIX,
    FEATURES_FIT_TASK,
    GENERATIVE_METHODS,
    LEARNED_NEEDS_PARAMETERS,
    LEARNED_ONLY_WITH_METHOD,
    LEARNED_WEIGHTS_PER_FEATURE,
    SPAN_NEEDS_TOKENS,
    TOKEN_FEATURES,
    Accept,
    ConfidenceMethod,
    LearnedScore,
    ScoredSpan,
    ScoreFeature,
    check_fits_task,
    needs_whole_answer,
)
from kascade.api.admission import Admission, TierAdmission
from kascade.api.agreement import AnswerMatcher
from kascade.api.autoscaling import (
    COLD_START_WAIT_ONLY_ON_LAST_AT_ZERO,
    EXTERNAL_TIER_IS_NOT_SCALED,
    LAST_TIER_ZERO_NEEDS_A_WAIT,
    Autoscaling,
)
from kascade.api.base import SpecModel, StatusModel  # noqa: F401 - StatusModel: imported from here too
from kascade.api.loop import (  # noqa: F401 - DistillationLoss: imported from here too
    DISTILLATION_NEEDS_THE_LOG,
    DISTILLATION_TIER_NOT_LAST,
    ON_POLICY_NEEDS_A_SCORING_TEACHER,
    ONLINE_CALIBRATION_NEEDS_WHOLE_ANSWERS,
    STUDENT_MUST_BE_TRAINABLE,
    Calibration,
    DistillationLoss,
    DistillationPolicy,
    EscalationLog,
)
from kascade.api.model_uri import ModelUri
from kascade.api.parts import Price, SecretKeyRef
from kascade.api.pre_route import LAST_TIER_IS_NOT_PRE_ROUTED, PreRoute
from kascade.api.resources import (  # noqa: F401 - imported from here too
    DNS_LABEL_PATTERN,
    LABEL_VALUE_PATTERN,
    QUANTITY_PATTERN,
    TOLERATION_SECONDS_NEED_NO_EXECUTE,
    Quantity,
    Resources,
    Toleration,
)
from kascade.api.status import Condition, Cost, ModelCascadeStatus, StatusSummary, TierStatus, Traffic  # noqa: F401

API_VERSION: Final = "kascade.dev/v1alpha1"
GROUP, VERSION = API_VERSION.split("/")
KIND: Final = "ModelCascade"
PLURAL = "modelcascades"
DEFAULT_MAX_BODY_BYTES = 1_048_576  # the router's limit on a request body, unless the spec says otherwise


class Task(StrEnum):
    chat = "chat"
    completion = "completion"
    classify = "classify"


class EngineKind(StrEnum):
    vllm = "vllm"
    transformers = "transformers"
    external = "external"


class ModelSource(SpecModel):
    """Which model a tier serves."""

    uri: str = Field(
        min_length=1,
        max_length=2048,
        description=(
            "Where the weights are: hf://org/name, pvc://claim/path, s3://bucket/path, "
            "pkg://catalog-name (models packaged for local mode), or a local path "
            "in local mode. For engine external: the OpenAI-compatible base URL."
        ),
    )
    served_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="The model name the engine serves and answers with; defaults to the tier name.",
    )
    hub_token_secret: SecretKeyRef | None = Field(default=None, description="Token for gated hub models (HF_TOKEN).")

    @property
    def location(self) -> ModelUri:
        """`uri`, parsed."""
        return ModelUri.parse(self.uri)


def currency_conflict(prices: Mapping[str, Price]) -> str | None:
    """Why tier prices cannot be added up (they name different currencies), or None when they can."""
    if len({price.currency for price in prices.values()}) <= 1:
        return None
    listing = ", ".join(f"{tier}: {price.currency}" for tier, price in prices.items())
    return (
        f"tier prices must share one currency to be added up; got {listing}. "
        "Convert every tier's price to the same currency."
    )


class Tier(SpecModel):
    """One model of the cascade: where it comes from, how it is served, what it costs, when it may answer."""

    name: str = Field(
        min_length=1,
        max_length=40,
        pattern=DNS_LABEL_PATTERN,
        description="DNS label (lower-case letters, digits, '-'); names the tier's Deployment and Service.",
    )
    model: ModelSource
    engine: EngineKind = Field(
        default=EngineKind.vllm,
        description=(
            "vllm: the official vLLM OpenAI-compatible server; transformers: Kascade's own model server "
            "(CPU or GPU); external: an OpenAI-compatible API at model.uri, nothing is deployed."
        ),
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Pods of this tier (ignored for engine external, and when autoscaling is set).",
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Replicas moved by an autoscaler from the load the routers send the tier (replaces replicas).",
    )
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(
        default_factory=dict, max_length=32, description="Node labels the tier's pods must run on."
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    affinity: dict[str, Any] | None = Field(
        default=None, description="A Kubernetes Affinity, passed through to the tier's pods."
    )
    engine_args: list[str] = Field(
        default_factory=list, max_length=64, description="Extra engine command-line arguments, passed as they are."
    )
    api_key_secret: SecretKeyRef | None = Field(
        default=None, description="For engine external: the API key sent as a bearer token."
    )
    price: Price = Field(default_factory=Price)
    accept: Accept | None = Field(
        default=None, description="Confidence rule; required on every tier but the last, refused on the last."
    )
    pre_route: PreRoute | None = Field(
        default=None,
        description="Skips this tier before it is asked when the prompt predicts it would not keep the request "
        "(not on the last tier, which answers whatever reaches it).",
    )
    admission: TierAdmission | None = Field(
        default=None, description="This tier's bounds on calls in flight and queued, in place of the router's."
    )

    @property
    def served_name(self) -> str:
        """The model name the tier's engine serves and answers with."""
        return self.model.served_name or self.name


class OnTierError(StrEnum):
    escalate = "escalate"
    fail = "fail"


class StreamingMode(StrEnum):
    buffer = "buffer"  # decide on the whole small-tier answer, then stream the chosen one
    early = "early"  # decide after the first N tokens, then stream on or escalate


class Streaming(SpecModel):
    """How streamed requests are answered."""

    mode: StreamingMode = Field(
        default=StreamingMode.buffer,
        description=(
            "buffer: score the small tier's whole answer, then stream the chosen one; "
            "early: decide after earlyTokens tokens, then stream on or escalate."
        ),
    )
    early_tokens: int = Field(default=16, ge=1, le=4096, description="Tokens scored before deciding in early mode.")


class Router(SpecModel):
    """The router Deployment: the cascade's OpenAI-compatible endpoint."""

    replicas: int = Field(default=1, ge=0, le=1000)
    api_key_secret: SecretKeyRef | None = Field(
        default=None, description="When set, clients must send one of its keys (one per line) as a bearer token."
    )
    timeout_seconds: float = Field(default=60.0, gt=0, description="Per tier call.")
    retries: int = Field(
        default=1, ge=0, le=10, description="Retries of a failed tier call before on_tier_error applies."
    )
    on_tier_error: OnTierError = Field(
        default=OnTierError.escalate,
        description="When a tier call fails after its retries: escalate to the next tier, or fail the request.",
    )
    streaming: Streaming = Field(default_factory=Streaming)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024, description="Largest request body accepted.")
    admission: Admission = Field(
        default_factory=Admission,
        description="Calls in flight and queued per tier, and what a request that finds a tier full gets.",
    )


class ModelCascadeSpec(SpecModel):
    """A cascade of models: the cheapest tier answers first, the next one when it is not confident."""

    # The cross-field rules of `_check_tiers` are restated in CEL in the CRD
    # (`kascade.api.crd.SPEC_RULES`, `TIER_RULES`); change both together.

    task: Task = Field(default=Task.chat, description="chat, completion or classify.")
    tiers: list[Tier] = Field(min_length=1, max_length=8, description="Cheapest first; the last tier always answers.")
    router: Router = Field(default_factory=Router)
    calibration: Calibration | None = None
    escalation_log: EscalationLog | None = None
    distillation: DistillationPolicy | None = None

    @property
    def matcher(self) -> AnswerMatcher:
        """How this cascade judges agreement (online calibration, the log's `agreed`, the promotion gate): the
        calibration's matcher, else the task's default: label for classify; for chat and completion, an LLM judge
        (the last tier, or the calibration's judge.url), or semantic where no judge can be asked (an external last
        tier, whose logprobs Kascade cannot count on, and no judge.url)."""
        if self.calibration is not None and self.calibration.matcher is not None:
            return self.calibration.matcher
        if self.task is Task.classify:
            return AnswerMatcher.label
        return AnswerMatcher.judge if self.judge_can_be_asked else AnswerMatcher.semantic

    @property
    def judge_can_be_asked(self) -> bool:
        """Whether `matcher: judge` has an LLM to ask: a judge.url, or a last tier Kascade deploys."""
        judge = self.calibration.judge if self.calibration is not None else None
        return (judge is not None and judge.external) or self.tiers[-1].engine is not EngineKind.external

    @model_validator(mode="after")
    def _check_tiers(self) -> ModelCascadeSpec:
        names = [tier.name for tier in self.tiers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"tier names must be unique; repeated: {', '.join(duplicates)}")
        *front, last = self.tiers
        if last.accept is not None:
            raise ValueError(f"the last tier ({last.name!r}) always answers and takes no accept rule")
        if last.pre_route is not None:
            raise ValueError(f"the last tier ({last.name!r}) {LAST_TIER_IS_NOT_PRE_ROUTED}")
        for tier in front:
            if tier.accept is None:
                raise ValueError(f"tier {tier.name!r} is not the last tier and needs an accept rule")
        allowed = CLASSIFY_METHODS if self.task is Task.classify else GENERATIVE_METHODS
        for tier in front:
            assert tier.accept is not None
            if tier.accept.method not in allowed:
                raise ValueError(
                    f"tier {tier.name!r}: method {tier.accept.method.value!r} does not fit task "
                    f"{self.task.value!r}; use one of {sorted(m.value for m in allowed)}"
                )
            check_fits_task(tier.name, tier.accept, classify=self.task is Task.classify)
            if self.router.streaming.mode is StreamingMode.early and needs_whole_answer(tier.accept):
                raise ValueError(f"tier {tier.name!r}: {EARLY_MODE_SCORES_A_PREFIX}")
        for tier in self.tiers:
            if tier.engine is EngineKind.external and not tier.model.uri.startswith(("http://", "https://")):
                raise ValueError(f"tier {tier.name!r}: engine external needs an http(s) URL as model.uri")
        self._check_autoscaling()
        return self

    def _check_autoscaling(self) -> None:
        """Restated in CEL in the CRD (`kascade.api.crd.TIER_RULES`, `SPEC_RULES`)."""
        for index, tier in enumerate(self.tiers):
            scaling = tier.autoscaling
            if scaling is None:
                continue
            if tier.engine is EngineKind.external:
                raise ValueError(f"tier {tier.name!r}: {EXTERNAL_TIER_IS_NOT_SCALED}")
            last = index == len(self.tiers) - 1
            if last and scaling.scales_to_zero and scaling.cold_start_wait_seconds is None:
                raise ValueError(f"tier {tier.name!r}: {LAST_TIER_ZERO_NEEDS_A_WAIT}")
            if scaling.cold_start_wait_seconds is not None and not (last and scaling.scales_to_zero):
                raise ValueError(f"tier {tier.name!r}: {COLD_START_WAIT_ONLY_ON_LAST_AT_ZERO}")

    @model_validator(mode="after")
    def _loop_parts_fit(self) -> ModelCascadeSpec:
        # Restated in CEL in the CRD (`kascade.api.crd.SPEC_RULES`).
        if self.distillation is not None:
            log = self.escalation_log
            if log is None or not log.enabled or not log.uri:
                raise ValueError(DISTILLATION_NEEDS_THE_LOG)
            if self.distillation.tier is not None and self.distillation.tier not in [t.name for t in self.tiers[:-1]]:
                raise ValueError(DISTILLATION_TIER_NOT_LAST)
            student = next((t for t in self.tiers if t.name == (self.distillation.tier or self.tiers[0].name)), None)
            if student is not None and (student.engine is EngineKind.external or student.model.uri.startswith("s3://")):
                raise ValueError(STUDENT_MUST_BE_TRAINABLE)
            if self.distillation.training.on_policy_fraction > 0 and (
                self.task is Task.classify or self.tiers[-1].engine is EngineKind.external
            ):
                raise ValueError(ON_POLICY_NEEDS_A_SCORING_TEACHER)
        if (
            self.calibration is not None
            and self.calibration.online
            and self.router.streaming.mode is StreamingMode.early
        ):
            raise ValueError(ONLINE_CALIBRATION_NEEDS_WHOLE_ANSWERS)
        return self


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = None


class ModelCascade(BaseModel):
    """A ModelCascade resource as a whole."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    api_version: Literal["kascade.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["ModelCascade"] = KIND
    metadata: ObjectMeta
    spec: ModelCascadeSpec
    status: ModelCascadeStatus | None = None
