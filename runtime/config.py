"""The router's runtime configuration: what one router process needs to know.

The operator renders it into a ConfigMap from a ModelCascade; local mode builds
it in memory. Config models forbid unknown fields (a typo must fail loudly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kascade.api.admission import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_QUEUE_TIMEOUT_SECONDS,
    Admission,
    OnEscalationFull,
    tier_limits,
)
from kascade.api.agreement import AnswerMatcher
from kascade.api.loop import Calibration
from kascade.api.model_uri import ModelUri
from kascade.api.modelcascade import (
    DEFAULT_MAX_BODY_BYTES,
    Accept,
    EngineKind,
    ModelCascade,
    OnTierError,
    Price,
    Streaming,
    Task,
    Tier,
)
from kascade.api.parts import SecretKeyRef
from kascade.api.pre_route import LAST_TIER_IS_NOT_PRE_ROUTED, PreRoute
from kascade.runtime.cluster_status.report import StatusReportConfig
from kascade.runtime.models.encoder import IMAGE_ENCODER_DIR, onnx_encoder_dir


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TierConfig(ConfigModel):
    name: str
    served_model: str = Field(description="The model name sent to the tier and reported to clients.")
    url: str | None = Field(
        default=None,
        description="OpenAI base URL of the tier, e.g. http://127.0.0.1:8001/v1. None: an in-process engine is given.",
    )
    api_key_env: str | None = Field(default=None, description="Environment variable holding the tier's API key.")
    api_key_file: str | None = Field(default=None, description="File holding the tier's API key (a mounted Secret).")
    price: Price = Field(default_factory=Price)
    accept: Accept | None = None
    model_uri: str | None = Field(default=None, description="The tier's model.uri (kept in escalation records).")
    model_revision: str | None = Field(default=None, description="The model's revision, where one is pinned.")
    returns_token_ids: bool = Field(
        default=False,
        description="The tier honours vLLM's return_tokens_as_token_ids (vllm and transformers engines do).",
    )
    pre_route: PreRoute | None = Field(
        default=None, description="Skip the tier before it is asked when the prompt predicts it keeps no answer."
    )
    max_in_flight: int = Field(
        default=DEFAULT_MAX_IN_FLIGHT, ge=1, description="Calls this router sends the tier at once (admission)."
    )
    max_queue: int = Field(default=DEFAULT_MAX_QUEUE, ge=0, description="Requests waiting for one of those slots.")
    skip_without_replica: bool = Field(
        default=False,
        description="Scales to zero (not the last tier): while it refuses connections (no ready replica) it is skipped.",
    )
    cold_start_wait_seconds: float | None = Field(
        default=None, gt=0, description="The last tier scaled to zero: how long a request waits for a replica."
    )

    def read_api_key(self) -> str | None:
        return read_api_key(file=self.api_key_file, env=self.api_key_env)


def read_api_key(*, file: str | None, env: str | None) -> str | None:
    """An API key from a file (a mounted Secret) or else an environment variable; None when neither holds one."""
    import os

    if file:
        return Path(file).read_text().strip() or None
    if env:
        return os.environ.get(env) or None
    return None


class EscalationLogConfig(ConfigModel):
    """Where and how one router keeps its escalations (rendered from `spec.escalationLog`)."""

    uri: str = Field(description="A folder, file:// or s3:// (a PVC is mounted as a folder).")
    retention_days: int = Field(default=30, ge=1)
    redact: list[str] = Field(default_factory=list)
    top_logprobs: int = Field(default=5, ge=0, le=20)
    queue_size: int = Field(default=10_000, ge=1, description="Records waiting at most; beyond, dropped and counted.")
    segment_records: int = Field(default=1000, ge=1, description="Records per segment at most.")
    flush_seconds: float = Field(default=60.0, gt=0, description="A segment is written at least this often.")


class JudgeConfig(ConfigModel):
    """matcher judge: the LLM asked whether two answers agree (rendered from `spec.calibration.judge`)."""

    url: str | None = Field(
        default=None, description="OpenAI base URL of the judge; None: the last tier, through the router's engine."
    )
    model: str = Field(description="The model asked: judge.model at url, else the last tier's served model.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the judge's API key.")
    api_key_file: str | None = Field(default=None, description="File holding the judge's API key (a mounted Secret).")
    price: Price = Field(description="What a judge call costs: judge.price, else the last tier's price.")
    concurrency: int = Field(default=4, ge=1, description="Judge calls in flight at most; beyond, a sample is lost.")
    min_probability: float = Field(default=0.5, gt=0, lt=1, description="Agreed when P(yes) is at least this.")

    def read_api_key(self) -> str | None:
        return read_api_key(file=self.api_key_file, env=self.api_key_env)


class SemanticConfig(ConfigModel):
    """matcher semantic: the exported sentence encoder and the cutoff (from `spec.calibration.semanticCutoff`)."""

    model_dir: str = Field(
        default=IMAGE_ENCODER_DIR,
        description="The exported encoder's folder (model.onnx, tokenizer.json); the runtime image carries it here.",
    )
    cutoff: float = Field(gt=0, le=1, description="Two answers agree when their embeddings' cosine is at least this.")
    threads: int = Field(default=1, ge=1, le=64, description="ONNX Runtime's intra-op threads for the encoder.")
    export_if_missing: bool = Field(
        default=False, description="Local mode: export the packaged encoder into model_dir on first use (torch)."
    )


class ShadowSamplingConfig(ConfigModel):
    """Online calibration's measurements in the router (rendered from `spec.calibration`, rate > 0)."""

    rate: float = Field(gt=0, le=1, description="Share of requests whose agreement with the last tier is measured.")
    matcher: AnswerMatcher = Field(description="How a tier's answer is judged against the last tier's.")
    concurrency: int = Field(
        default=4, ge=1, description="Shadow calls in flight at most; beyond, a sample is skipped."
    )
    calibrate_in_process: Calibration | None = Field(
        default=None, description="Local mode: the goal, applied by this router itself (in a cluster, the operator)."
    )
    semantic: SemanticConfig | None = Field(default=None, description="matcher semantic: the encoder that judges.")

    @model_validator(mode="after")
    def _encoder_for_matcher_semantic(self) -> ShadowSamplingConfig:
        if (self.matcher is AnswerMatcher.semantic) != (self.semantic is not None):
            raise ValueError("shadow_sampling.semantic is set with matcher semantic, and only then")
        return self

    judge: JudgeConfig | None = Field(default=None, description="matcher judge: the LLM that judges.")

    @model_validator(mode="after")
    def _judge_for_matcher_judge(self) -> ShadowSamplingConfig:
        if (self.matcher is AnswerMatcher.judge) != (self.judge is not None):
            raise ValueError("shadow_sampling.judge is set with matcher judge, and only then")
        return self


DEFAULT_METRICS_PORT = 9090


class RouterConfig(ConfigModel):
    cascade: str = Field(description="The model name clients ask for: the ModelCascade's name.")
    metrics_port: int = Field(
        default=DEFAULT_METRICS_PORT,
        ge=1,
        le=65535,
        description="The port of /metrics and /stats, apart from the API's, which the cascade's Service exposes.",
    )
    task: Task = Task.chat
    tiers: list[TierConfig] = Field(min_length=1)
    timeout_seconds: float = Field(default=60.0, gt=0)
    retries: int = Field(default=1, ge=0)
    retry_backoff_seconds: float = Field(default=0.05, ge=0)
    on_tier_error: OnTierError = OnTierError.escalate
    streaming: Streaming = Field(default_factory=Streaming)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    queue_timeout_seconds: float = Field(
        default=DEFAULT_QUEUE_TIMEOUT_SECONDS, gt=0, description="A request's wait for a tier's slot at most."
    )
    on_escalation_full: OnEscalationFull = Field(
        default=OnEscalationFull.wait, description="What an escalated request that finds the next tier full gets."
    )
    api_keys_file: str | None = Field(default=None, description="Client API keys, one per line (a mounted Secret).")
    api_keys_env: str | None = Field(
        default=None, description="Environment variable with comma-separated client API keys."
    )
    escalation_log: EscalationLogConfig | None = Field(
        default=None, description="Keep escalated requests with the answering tier's tokens (teacher data)."
    )
    shadow_sampling: ShadowSamplingConfig | None = Field(
        default=None, description="Measure agreement with the last tier on a share of requests (online calibration)."
    )
    status_report: StatusReportConfig | None = Field(
        default=None, description="Report this replica's counters into the ModelCascade's status (in a cluster)."
    )

    @model_validator(mode="after")
    def _last_tier_answers(self) -> RouterConfig:
        for tier in self.tiers[:-1]:
            if tier.accept is None:
                raise ValueError(f"tier {tier.name!r} is not the last tier and needs an accept rule")
        if self.tiers[-1].accept is not None:
            raise ValueError("the last tier always answers and takes no accept rule")
        if self.tiers[-1].pre_route is not None:
            raise ValueError(f"the last tier {LAST_TIER_IS_NOT_PRE_ROUTED}")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> RouterConfig:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))

    def read_client_api_keys(self) -> frozenset[str]:
        import os

        keys: set[str] = set()
        if self.api_keys_file:
            keys.update(line.strip() for line in Path(self.api_keys_file).read_text().splitlines())
        if self.api_keys_env:
            keys.update(part.strip() for part in os.environ.get(self.api_keys_env, "").split(","))
        keys.discard("")
        return frozenset(keys)


def router_config_from_cascade(
    cascade: ModelCascade,
    tier_urls: dict[str, str | None],
    *,
    tier_api_key_envs: dict[str, str] | None = None,
    tier_api_key_files: dict[str, str] | None = None,
    api_keys_file: str | None = None,
    api_keys_env: str | None = None,
    escalation_log_uri: str | None = None,
    calibrate_in_process: bool = False,
    judge_api_key_env: str | None = None,
    judge_api_key_file: str | None = None,
) -> RouterConfig:
    """Render the router's config from a ModelCascade and where each tier is reachable.

    `tier_urls` maps a tier name to its OpenAI base URL, or to None when local
    mode hands the router an in-process engine for that tier.
    `escalation_log_uri` is where this router writes the escalation log when
    the spec enables it (the operator's mount of a pvc:// URI); by default the
    spec's own URI. `calibrate_in_process`: local mode, where the router moves
    its own thresholds (in a cluster the operator does, for every replica).
    `judge_api_key_env`/`judge_api_key_file`: where an external judge's API key is (`judge_of`).
    """
    spec = cascade.spec
    tier_api_key_envs = tier_api_key_envs or {}
    tier_api_key_files = tier_api_key_files or {}
    tiers = [
        _tier_config(
            tier,
            spec.router.admission,
            url=tier_urls.get(tier.name),
            api_key_env=tier_api_key_envs.get(tier.name),
            api_key_file=tier_api_key_files.get(tier.name),
            last=tier is spec.tiers[-1],
        )
        for tier in spec.tiers
    ]
    return RouterConfig(
        cascade=cascade.metadata.name,
        task=spec.task,
        tiers=tiers,
        timeout_seconds=spec.router.timeout_seconds,
        retries=spec.router.retries,
        on_tier_error=spec.router.on_tier_error,
        streaming=spec.router.streaming,
        max_body_bytes=spec.router.max_body_bytes,
        queue_timeout_seconds=spec.router.admission.queue_timeout_seconds,
        on_escalation_full=spec.router.admission.on_escalation_full,
        api_keys_file=api_keys_file,
        api_keys_env=api_keys_env,
        escalation_log=escalation_log_of(cascade, escalation_log_uri),
        shadow_sampling=shadow_sampling_of(
            cascade,
            calibrate_in_process=calibrate_in_process,
            judge=judge_of(cascade, api_key_env=judge_api_key_env, api_key_file=judge_api_key_file),
        ),
    )


def _tier_config(
    tier: Tier,
    admission: Admission,
    *,
    url: str | None,
    api_key_env: str | None,
    api_key_file: str | None,
    last: bool = False,
) -> TierConfig:
    """One tier as the router calls it; its admission bounds are `kascade.api.admission.tier_limits`."""
    limits = tier_limits(
        admission,
        tier.admission,
        one_at_a_time=tier.engine is EngineKind.transformers,
        # an autoscaled tier may grow to maxReplicas: the bound must not hold it below what it can serve
        replicas=tier.autoscaling.max_replicas if tier.autoscaling is not None else tier.replicas,
    )
    return TierConfig(
        name=tier.name,
        served_model=tier.served_name,
        url=url,
        api_key_env=api_key_env,
        api_key_file=api_key_file,
        price=tier.price,
        accept=tier.accept,
        model_uri=tier.model.uri,
        model_revision=ModelUri.parse(tier.model.uri).hf_revision,
        returns_token_ids=tier.engine is not EngineKind.external,
        pre_route=tier.pre_route,
        max_in_flight=limits.max_in_flight,
        max_queue=limits.max_queue,
        **_scale_to_zero_of(tier, last=last),
    )


def _scale_to_zero_of(tier: Tier, *, last: bool) -> dict[str, Any]:
    """How the router treats the tier while it has no ready replica (`replica_absence`): skip it, or wait."""
    scaling = tier.autoscaling
    if scaling is None or not scaling.scales_to_zero:
        return {}
    return {"cold_start_wait_seconds": scaling.cold_start_wait_seconds} if last else {"skip_without_replica": True}


def escalation_log_of(cascade: ModelCascade, uri: str | None) -> EscalationLogConfig | None:
    """Where and how this router writes the escalation log: `uri` overrides the spec's own; None when off."""
    log = cascade.spec.escalation_log
    if log is None or not log.enabled or not (uri or log.uri):
        return None
    return EscalationLogConfig(
        uri=uri or log.uri, retention_days=log.retention_days, redact=list(log.redact), top_logprobs=log.top_logprobs
    )


def shadow_sampling_of(
    cascade: ModelCascade, *, calibrate_in_process: bool, judge: JudgeConfig | None = None
) -> ShadowSamplingConfig | None:
    """What the router measures for online calibration; None when it is off (or there is nothing to escalate to)."""
    spec = cascade.spec
    calibration = spec.calibration
    if calibration is None or not calibration.online or len(spec.tiers) < 2:
        return None
    return ShadowSamplingConfig(
        rate=calibration.shadow_sample_rate,
        matcher=spec.matcher,
        concurrency=calibration.shadow_concurrency,
        calibrate_in_process=calibration if calibrate_in_process else None,
        semantic=semantic_of(cascade, local_mode=calibrate_in_process),
        judge=judge,
    )


def judge_of(
    cascade: ModelCascade, *, api_key_env: str | None = None, api_key_file: str | None = None
) -> JudgeConfig | None:
    """The judge of `matcher: judge` (None for any other matcher): `spec.calibration.judge`, defaulting to the
    last tier's served model and price. The key (env or file) is the judge's own, for a judge.url only."""
    spec = cascade.spec
    if spec.matcher is not AnswerMatcher.judge or spec.calibration is None:
        return None
    judge, last = spec.calibration.judge, spec.tiers[-1]
    keyed = judge_api_key_secret(cascade) is not None
    return JudgeConfig(
        url=judge.url,
        model=judge.model or last.served_name,
        api_key_env=api_key_env if keyed else None,
        api_key_file=api_key_file if keyed else None,
        price=judge.price or last.price,
        concurrency=judge.concurrency,
        min_probability=judge.min_probability,
    )


def semantic_of(cascade: ModelCascade, *, local_mode: bool) -> SemanticConfig | None:
    """The encoder of `matcher: semantic` (None for any other matcher): in a cluster the image's folder; in local
    mode the cache's, exported there on first use."""
    spec = cascade.spec
    if spec.matcher is not AnswerMatcher.semantic or spec.calibration is None:
        return None
    cutoff = spec.calibration.semantic_cutoff
    if local_mode:
        return SemanticConfig(model_dir=str(onnx_encoder_dir()), cutoff=cutoff, export_if_missing=True)
    return SemanticConfig(cutoff=cutoff)


def judge_api_key_secret(cascade: ModelCascade) -> SecretKeyRef | None:
    """The Secret of the judge.url's API key, where the routers ask that judge (online calibration, matcher judge)."""
    spec = cascade.spec
    calibration = spec.calibration
    if calibration is None or not calibration.online or len(spec.tiers) < 2 or spec.matcher is not AnswerMatcher.judge:
        return None
    return calibration.judge.api_key_secret if calibration.judge.external else None
