"""What one distillation run is: its settings, written into the output's provenance and checked on resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kascade.api.loop import AnswerMatcher
from kascade.distillation.losses import Divergence


class DistillSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    student: str = Field(description="The student: a model URI (pkg://, hf://, a folder).")
    teacher: str | None = Field(
        default=None,
        description="An in-process teacher (model URI): scores answers the log has no token ids for, and on-policy samples.",
    )
    teacher_url: str | None = Field(
        default=None, description="A teacher server's OpenAI base URL (vLLM, kascade serve): scores on-policy samples."
    )
    teacher_model: str | None = Field(default=None, description="The model name the teacher server serves.")
    data: str = Field(description="An escalation log (folder, file://, s3://) or a dataset .jsonl file.")
    out: Path = Field(description="The output folder: the distilled model, servable as it is, with provenance.json.")
    divergence: Divergence = Divergence.forward_kl
    temperature: float = Field(default=2.0, gt=0)
    alpha: float = Field(
        default=0.5, ge=0, le=1, description="Weight of the soft (teacher) term; 1 - alpha: hard labels."
    )
    beta: float = Field(default=0.5, ge=0, le=1, description="Generalized JSD interpolation.")
    on_policy_fraction: float = Field(
        default=0.0, ge=0, le=1, description="Share of steps on the student's own samples, scored by the teacher."
    )
    lora: bool = Field(default=True, description="Train LoRA adapters (peft), merged into the saved model.")
    lora_rank: int = Field(default=16, ge=1)
    steps: int = Field(default=200, ge=1)
    batch_size: int = Field(default=8, ge=1)
    learning_rate: float = Field(default=2e-4, gt=0)
    warmup_steps: int = Field(default=10, ge=0)
    max_length: int = Field(default=512, ge=8, description="Most tokens per example, prompt and answer.")
    max_new_tokens: int = Field(default=64, ge=1, description="Length of on-policy samples and of held-out answers.")
    held_out: float = Field(default=0.1, ge=0, lt=1, description="Share of the data kept for evaluation (stable hash).")
    eval_every: int = Field(default=50, ge=1)
    eval_generate: int = Field(default=32, ge=0, description="Held-out examples whose final answers are generated.")
    match: AnswerMatcher = AnswerMatcher.exact
    teacher_top_k: int = Field(default=20, ge=1, le=256, description="Entries an in-process teacher keeps per token.")
    limit: int | None = Field(default=None, ge=1, description="Use at most this many examples (seeded sample).")
    seed: int = 0
    min_agreement_gain: float = Field(default=0.01, ge=0, le=1, description="Promotion gate: least overall gain.")
    slice_tolerance: float = Field(default=0.02, ge=0, le=1, description="Promotion gate: most any slice may lose.")
    min_slice_examples: int = Field(
        default=20, ge=1, description="Promotion gate: smaller slices are shown, not judged."
    )
    device: str = "auto"

    @model_validator(mode="after")
    def _on_policy_needs_a_teacher(self) -> DistillSettings:
        if self.on_policy_fraction > 0 and self.teacher is None and self.teacher_url is None:
            raise ValueError(
                "on-policy steps need a teacher to score the student's samples: pass --teacher or --teacher-url"
            )
        if self.teacher_url is not None and not self.teacher_model:
            raise ValueError("--teacher-url needs --teacher-model, the name the teacher server serves")
        return self

    def fingerprint(self) -> str:
        """What a checkpoint must share with a run to be resumed by it (everything but the step count)."""
        settings = self.model_dump(
            mode="json",
            exclude={
                "steps",
                "out",
                "eval_every",
                "eval_generate",
                "device",
                "min_agreement_gain",
                "slice_tolerance",
                "min_slice_examples",
            },
        )
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
