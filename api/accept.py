"""A tier's accept rule: how its answer is scored (method, span, the learned score's parameters) and the threshold.

Part of the ModelCascade API (`kascade.api.modelcascade` re-exports it); the
CRD's CEL rules (`kascade.api.crd`) restate the cross-field checks here with
the same messages.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from kascade.api.base import SpecModel


class ConfidenceMethod(StrEnum):
    """How a tier's answer is scored; every score lies in [0, 1]."""

    geometric_mean = "geometricMean"  # exp(mean token logprob)
    min_token = "minToken"  # the least likely generated token
    quantile = "quantile"  # a low quantile of token probabilities
    margin = "margin"  # mean top-1 minus top-2 probability
    entropy = "entropy"  # 1 - normalised entropy of the top-k distribution
    max_prob = "maxProb"  # classify: probability of the chosen label
    class_margin = "classMargin"  # classify: top-1 minus top-2 label probability
    learned = "learned"  # a logistic model over features of the evidence, fitted by `kascade calibrate`


GENERATIVE_METHODS = frozenset(
    {
        ConfidenceMethod.geometric_mean,
        ConfidenceMethod.min_token,
        ConfidenceMethod.quantile,
        ConfidenceMethod.margin,
        ConfidenceMethod.entropy,
        ConfidenceMethod.learned,
    }
)
CLASSIFY_METHODS = frozenset({ConfidenceMethod.max_prob, ConfidenceMethod.class_margin, ConfidenceMethod.learned})


class ScoredSpan(StrEnum):
    """Which generated tokens a token method scores.

    A chat answer often repeats the prompt (a copied signature and docstring, a
    restated question) with a confidence that says nothing about the answer.
    """

    all = "all"  # every generated token
    final_code_block = "finalCodeBlock"  # the content of the last ``` code block
    final_line = "finalLine"  # the last non-blank line (where a final answer usually is)
    not_copied = "notCopied"  # tokens not copied from the prompt


class ScoreFeature(StrEnum):
    """A feature the learned score reads. Token features (chat, completion) are read over the scored span."""

    prob_quantile_05 = "probQuantile05"
    prob_quantile_10 = "probQuantile10"
    prob_quantile_25 = "probQuantile25"
    prob_quantile_50 = "probQuantile50"
    min_prob = "minProb"
    mean_prob = "meanProb"
    mean_logprob = "meanLogprob"  # clipped at -20 per token
    mean_margin = "meanMargin"
    min_margin = "minMargin"
    mean_entropy = "meanEntropy"  # normalised entropy of the top-k distribution
    log_answer_tokens = "logAnswerTokens"  # log(1 + scored tokens)
    log_prompt_tokens = "logPromptTokens"  # log(1 + prompt tokens), from the response's usage
    max_prob = "maxProb"  # classify
    class_margin = "classMargin"  # classify
    label_entropy = "labelEntropy"  # classify: normalised entropy of the label distribution


CLASSIFY_FEATURES = frozenset(
    {ScoreFeature.max_prob, ScoreFeature.class_margin, ScoreFeature.label_entropy, ScoreFeature.log_prompt_tokens}
)
TOKEN_FEATURES = frozenset(feature for feature in ScoreFeature if feature not in CLASSIFY_FEATURES) | {
    ScoreFeature.log_prompt_tokens
}


class LearnedScore(SpecModel):
    """The learned score's parameters: sigmoid(bias + sum_i weights[i] * features[i]), written by `kascade calibrate`."""

    features: list[ScoreFeature] = Field(min_length=1, max_length=16, description="What the score reads, in order.")
    weights: list[float] = Field(min_length=1, max_length=16, description="One weight per feature, same order.")
    bias: float = 0.0
    target: Literal["agreement", "correctness"] = Field(
        default="agreement",
        description="What it was fitted to predict: agreement with the last tier, or correctness against labels.",
    )

    @model_validator(mode="after")
    def _one_weight_per_feature(self) -> LearnedScore:
        if len(self.weights) != len(self.features):
            raise ValueError(LEARNED_WEIGHTS_PER_FEATURE)
        if len(set(self.features)) != len(self.features):
            raise ValueError("learned.features must not repeat a feature")
        return self


LEARNED_WEIGHTS_PER_FEATURE = "learned.weights needs exactly one weight per feature in learned.features"
LEARNED_NEEDS_PARAMETERS = "method learned needs its parameters in accept.learned (kascade calibrate writes them)"
LEARNED_ONLY_WITH_METHOD = "accept.learned is read by method learned only; remove it or set method: learned"


class Accept(SpecModel):
    """When a tier's own answer is good enough to return."""

    method: ConfidenceMethod = Field(
        default=ConfidenceMethod.geometric_mean,
        description=(
            "How the answer is scored. Tasks chat and completion: geometricMean, minToken, quantile, "
            "margin, entropy, learned. Task classify: maxProb, classMargin, learned."
        ),
    )
    threshold: float = Field(ge=0, le=1, description="Accept at or above this confidence.")
    quantile: float = Field(
        default=0.1, gt=0, lt=1, description="For method quantile: which low quantile of token probabilities."
    )
    span: ScoredSpan = Field(
        default=ScoredSpan.all,
        description=(
            "Which generated tokens are scored (chat and completion): all, finalCodeBlock, finalLine, "
            "notCopied (not copied from the prompt). An empty span scores 0: the request escalates."
        ),
    )
    learned: LearnedScore | None = Field(default=None, description="For method learned: its fitted parameters.")

    @model_validator(mode="after")
    def _learned_parameters(self) -> Accept:
        # Restated in CEL in the CRD (`kascade.api.crd.ACCEPT_RULES`).
        if self.method is ConfidenceMethod.learned and self.learned is None:
            raise ValueError(LEARNED_NEEDS_PARAMETERS)
        if self.method is not ConfidenceMethod.learned and self.learned is not None:
            raise ValueError(LEARNED_ONLY_WITH_METHOD)
        return self


SPAN_NEEDS_TOKENS = "accept.span selects generated tokens: task classify takes span all only"
FEATURES_FIT_TASK = (
    "accept.learned.features must fit spec.task: maxProb, classMargin, labelEntropy, logPromptTokens for "
    "classify; token features (probQuantile*, minProb, meanProb, meanLogprob, meanMargin, minMargin, "
    "meanEntropy, logAnswerTokens, logPromptTokens) for chat and completion"
)


EARLY_MODE_SCORES_A_PREFIX = (
    "streaming mode early scores the answer's first tokens: accept.span finalCodeBlock or finalLine, and the "
    "learned feature logPromptTokens, need the whole answer; use streaming mode buffer"
)


def needs_whole_answer(accept: Accept) -> bool:
    return accept.span in {ScoredSpan.final_code_block, ScoredSpan.final_line} or (
        accept.learned is not None and ScoreFeature.log_prompt_tokens in accept.learned.features
    )


def check_fits_task(tier_name: str, accept: Accept, *, classify: bool) -> None:
    """The span and the learned score's features read what the task's answers carry (restated in CEL)."""
    if classify and accept.span is not ScoredSpan.all:
        raise ValueError(f"tier {tier_name!r}: {SPAN_NEEDS_TOKENS}")
    if accept.learned is not None:
        fitting = CLASSIFY_FEATURES if classify else TOKEN_FEATURES
        if not set(accept.learned.features) <= fitting:
            raise ValueError(f"tier {tier_name!r}: {FEATURES_FIT_TASK}")
