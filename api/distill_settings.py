"""One distillation run's settings: the contract between the operator that renders a run's Job and its pod.

One definition: the API's `Training` and `Gate` (what a cluster run's spec
sets), the matcher, and the few fields only a run on a machine has (the paths,
an in-process teacher, the device). `kascade distill`'s options are these
fields by name (`of_options`); a run's Job gets them whole as one JSON
argument (`kascade.operator.build_distillation.run_settings`), validated by
this model in the pod; the run writes them into its provenance and checks
them on resume (`fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo

from kascade.api.agreement import SEMANTIC_CUTOFF, AnswerMatcher, OnlineMatcher
from kascade.api.loop import Gate, Training

ON_POLICY_NEEDS_A_TEACHER = (
    "on-policy steps need a teacher to score the student's samples: pass --teacher or --teacher-url"
)
TEACHER_URL_NEEDS_A_MODEL = "--teacher-url needs --teacher-model, the name the teacher server serves"
JUDGE_URL_NEEDS_A_MODEL = "--judge-url needs --judge-model, the model to ask at that endpoint"
JUDGE_API_KEY_ENV = "KASCADE_JUDGE_API_KEY"  # the bearer key of --judge-url (a run's Job sets it from a Secret)
JUDGE_NEEDS_AN_ENDPOINT = (
    "matcher judge needs an LLM to ask: --judge-url with --judge-model, the teacher server (--teacher-url), "
    "or a teacher in process (--teacher)"
)
# What a run measures and decides after training, not what it trains: a checkpoint resumes across them.
EVALUATION_SETTINGS = frozenset(
    {
        "semantic_cutoff",
        "semantic_encoder",
        "judge_url",
        "judge_model",
        "judge_min_probability",
        "judge_concurrency",
        "pre_route_tier",
        "pre_route_dimensions",
        "max_kept_skipped",
        "confidence",
    }
)


class DistillSettings(BaseModel):
    """Everything one run needs; `kascade distill` takes each field by name, those of `training` and `gate` too."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    student: str = Field(description="The student: a model URI (pkg://, hf://, a folder).")
    teacher: str | None = Field(
        default=None,
        description="An in-process teacher (model URI): scores answers the log has no token ids for, and on-policy samples.",
    )
    teacher_url: str | None = Field(
        default=None,
        description="A teacher server's OpenAI base URL (vLLM, kascade serve): scores on-policy samples by prompt_logprobs.",
    )
    teacher_model: str | None = Field(default=None, description="The model name the teacher server serves.")
    data: str = Field(description="An escalation log (folder, file://, s3://) or a dataset .jsonl file.")
    out: Path = Field(description="The output folder: the distilled model, servable as it is, with provenance.json.")
    training: Training = Field(default_factory=Training)
    gate: Gate = Field(default_factory=Gate)
    matcher: OnlineMatcher = Field(
        default=AnswerMatcher.exact,
        description="How a generated held-out answer agrees with the teacher's: label, number, exact, semantic or judge.",
    )
    semantic_cutoff: float = Field(
        default=SEMANTIC_CUTOFF,
        gt=0,
        le=1,
        description="matcher semantic: two answers agree when their embeddings' cosine is at least this.",
    )
    semantic_encoder: str | None = Field(
        default=None,
        description="matcher semantic: the exported encoder's folder (model.onnx, tokenizer.json); default: the "
        "runtime image's, else the packaged MiniLM exported into the cache on first use.",
    )
    judge_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="matcher judge: the OpenAI base URL of the LLM judge (bearer key: KASCADE_JUDGE_API_KEY); "
        "default: the teacher server.",
    )
    judge_model: str | None = Field(default=None, description="matcher judge: the model to ask at --judge-url.")
    judge_min_probability: float = Field(
        default=0.5, gt=0, lt=1, description="matcher judge: the answers agree when P(yes) is at least this."
    )
    judge_concurrency: int = Field(default=4, ge=1, le=256, description="matcher judge: judge calls in flight.")
    pre_route_tier: str | None = Field(
        default=None,
        description="Refit this tier's pre-route score from the escalation log (the tier's name in its records); "
        "none: no refit.",
    )
    pre_route_dimensions: int | None = Field(
        default=None, ge=16, le=1 << 16, description="Hash buckets of the refitted pre-route score; default: the fit's."
    )
    max_kept_skipped: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="The refitted pre-route score sends at most this share of the requests the tier keeps past it.",
    )
    confidence: float = Field(
        default=0.95, gt=0, lt=1, description="The confidence the refitted pre-route score's bound is certified at."
    )
    limit: int | None = Field(default=None, ge=1, description="Use at most this many examples (seeded sample).")
    seed: int = Field(default=0, description="Seed of the data order, on-policy sampling and the sample.")
    device: str = "auto"

    @model_validator(mode="after")
    def _on_policy_needs_a_teacher(self) -> DistillSettings:
        if self.training.on_policy_fraction > 0 and self.teacher is None and self.teacher_url is None:
            raise ValueError(ON_POLICY_NEEDS_A_TEACHER)
        if self.teacher_url is not None and not self.teacher_model:
            raise ValueError(TEACHER_URL_NEEDS_A_MODEL)
        if (self.judge_url is None) != (self.judge_model is None):
            raise ValueError(JUDGE_URL_NEEDS_A_MODEL)
        if self.matcher is AnswerMatcher.judge and self.judge_endpoint is None and self.teacher is None:
            raise ValueError(JUDGE_NEEDS_AN_ENDPOINT)
        return self

    @property
    def judge_endpoint(self) -> tuple[str, str] | None:
        """(base URL, model) of the LLM judge: --judge-url, else the teacher server; None: neither is given."""
        if self.judge_url is not None and self.judge_model is not None:
            return self.judge_url, self.judge_model
        if self.teacher_url is not None and self.teacher_model is not None:
            return self.teacher_url, self.teacher_model
        return None

    @classmethod
    def of_options(cls, options: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> DistillSettings:
        """From flat names, as the command line gives them, over `base` (nested, as `model_dump` writes it).

        Each name is a field of these settings, of `Training` or of `Gate`
        (`setting_field`); None means not given, so every default is the model's.
        """
        nested: dict[str, Any] = {**(base or {})}
        for part in ("training", "gate"):
            nested[part] = {**nested.get(part, {})}
        for name, value in options.items():
            if value is None:
                continue
            where, _ = setting_field(name)
            (nested[where] if where else nested)[name] = value
        return cls.model_validate(nested)

    def fingerprint(self) -> str:
        """What a checkpoint must share with a run to be resumed by it: everything that changes the training."""
        settings = self.model_dump(
            mode="json",
            exclude={
                "out": True,
                "device": True,
                "gate": True,
                "training": {"steps", "eval_every", "eval_generate"},
                **dict.fromkeys(EVALUATION_SETTINGS, True),
            },
        )
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def setting_field(name: str) -> tuple[str | None, FieldInfo]:
    """Where a flat setting name lives ("training", "gate", or None: the settings' own) and its field.

    The three models share no field name, so a flat name (an option of `kascade distill`) is never ambiguous.
    """
    for part, model in (("training", Training), ("gate", Gate), (None, DistillSettings)):
        if name in model.model_fields and name not in ("training", "gate"):
            return part, model.model_fields[name]
    raise ValueError(f"{name} is not a distillation setting")
