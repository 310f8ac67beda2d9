"""Scores of cached answers with the router's own scoring code, and the learned score's fit.

A `ScoreMethod` is an accept rule without a threshold (method, quantile,
span, learned parameters); `score_answers` scores answers exactly as the
router scores a live response, through `kascade.runtime.scoring.confidence`.
`fit_learned` fits the learned score: a logistic regression (scikit-learn)
on standardised features, folded back into weights on the raw features so
the router needs nothing but a dot product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kascade.api.modelcascade import (
    CLASSIFY_FEATURES,
    TOKEN_FEATURES,
    Accept,
    ConfidenceMethod,
    LearnedScore,
    ScoredSpan,
    ScoreFeature,
)
from kascade.evaluation.records import Example, TierAnswer
from kascade.runtime.logprobs import TokenEvidence
from kascade.runtime.scoring.confidence import score_class_probs, score_tokens
from kascade.runtime.scoring.features import class_features, token_features
from kascade.runtime.scoring.spans import select_span


@dataclass(frozen=True)
class ScoreMethod:
    method: ConfidenceMethod
    span: ScoredSpan = ScoredSpan.all
    quantile: float = 0.1
    learned: LearnedScore | None = None

    @property
    def label(self) -> str:
        name = f"quantile({self.quantile:g})" if self.method is ConfidenceMethod.quantile else self.method.value
        return name if self.span is ScoredSpan.all else f"{name}@{self.span.value}"

    def describe(self) -> dict[str, object]:
        """The rule as a manifest spells it, without a threshold (a cross-fitted learned score has no one set of parameters)."""
        rule: dict[str, object] = {"method": self.method.value, "span": self.span.value}
        if self.method is ConfidenceMethod.quantile:
            rule["quantile"] = self.quantile
        if self.learned is not None:
            rule["learned"] = self.learned.model_dump(mode="json", by_alias=True)
        return rule

    def accept(self, threshold: float = 0.5) -> Accept:
        return Accept(
            method=self.method, threshold=threshold, quantile=self.quantile, span=self.span, learned=self.learned
        )


FIXED_TOKEN_METHODS = (
    ConfidenceMethod.geometric_mean,
    ConfidenceMethod.min_token,
    ConfidenceMethod.quantile,
    ConfidenceMethod.margin,
    ConfidenceMethod.entropy,
)
FIXED_CLASS_METHODS = (ConfidenceMethod.max_prob, ConfidenceMethod.class_margin)
DEFAULT_TOKEN_FEATURES = tuple(f for f in ScoreFeature if f in TOKEN_FEATURES)
DEFAULT_CLASS_FEATURES = tuple(f for f in ScoreFeature if f in CLASSIFY_FEATURES)


def evidence(answer: TierAnswer) -> list[TokenEvidence]:
    return [
        TokenEvidence(lp, top, text)
        for lp, top, text in zip(answer.logprobs, answer.top_logprobs, answer.tokens, strict=True)
    ]


def prompt_of(example: Example) -> str:
    if example.messages is not None:
        return "\n".join(m.get("content", "") for m in example.messages)
    return example.prompt or example.input or ""


def score_answers(method: ScoreMethod, examples: Sequence[Example], answers: Sequence[TierAnswer]) -> list[float]:
    """Each answer's score under `method`, as the router would compute it."""
    accept = method.accept()
    scores = []
    for example, answer in zip(examples, answers, strict=True):
        if answer.label is not None:
            scores.append(score_class_probs(accept, answer.probs, prompt_tokens=answer.prompt_tokens))
        else:
            scores.append(
                score_tokens(accept, evidence(answer), prompt=prompt_of(example), prompt_tokens=answer.prompt_tokens)
            )
    return scores


def feature_rows(
    examples: Sequence[Example], answers: Sequence[TierAnswer], span: ScoredSpan, features: Sequence[ScoreFeature]
) -> list[list[float]]:
    rows = []
    for example, answer in zip(examples, answers, strict=True):
        if answer.label is not None:
            values = class_features(answer.probs, answer.prompt_tokens)
        else:
            tokens = select_span(evidence(answer), span, prompt_of(example))
            values = token_features(tokens, answer.prompt_tokens)
        rows.append([values[f] for f in features])
    return rows


def fit_learned(
    examples: Sequence[Example],
    answers: Sequence[TierAnswer],
    targets: Sequence[bool],
    *,
    span: ScoredSpan = ScoredSpan.all,
    features: Sequence[ScoreFeature] | None = None,
    target: str = "agreement",
) -> ScoreMethod:
    """The learned score fitted to predict `targets` (agreement with the last tier, or correctness).

    L2-regularised logistic regression on standardised features; a target
    with one class only gives a constant score at its rate.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    classify = bool(answers) and answers[0].label is not None
    chosen = tuple(features or (DEFAULT_CLASS_FEATURES if classify else DEFAULT_TOKEN_FEATURES))
    x = np.array(feature_rows(examples, answers, span, chosen), dtype=float)
    y = np.array([bool(t) for t in targets])
    if y.all() or not y.any():
        rate = min(max(float(y.mean()) if len(y) else 0.0, 1e-6), 1 - 1e-6)
        params = LearnedScore(
            features=list(chosen), weights=[0.0] * len(chosen), bias=float(np.log(rate / (1 - rate))), target=target
        )
        return ScoreMethod(ConfidenceMethod.learned, span=span, learned=params)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=1.0, max_iter=5000).fit((x - mean) / scale, y)
    weights = model.coef_[0] / scale
    bias = float(model.intercept_[0] - (model.coef_[0] * mean / scale).sum())
    params = LearnedScore(
        features=list(chosen), weights=[round(float(w), 6) for w in weights], bias=round(bias, 6), target=target
    )
    return ScoreMethod(ConfidenceMethod.learned, span=span, learned=params)
