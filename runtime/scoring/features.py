"""The learned score: features of a tier's evidence, and the logistic model over them (`accept.learned`).

Pure and cheap: a sort and a few sums per answer, then a dot product, so the
router scores with it on the hot path as it does with the fixed methods. The
same functions compute the features `kascade calibrate` fits on, so a fitted
model reads in production exactly what it was fitted on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from kascade.api.modelcascade import LearnedScore, ScoreFeature
from kascade.runtime.logprobs import TokenEvidence

_LOGPROB_FLOOR = -20.0  # one impossible token must not make a mean infinite


def _logprob(value: float) -> float:
    return _LOGPROB_FLOOR if math.isnan(value) else min(max(value, _LOGPROB_FLOOR), 0.0)


def _quantile(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def _normalised_entropy(probs: Sequence[float]) -> float:
    total = sum(probs)
    if len(probs) <= 1 or total <= 0.0:
        return 0.0
    entropy = -sum((p / total) * math.log(p / total) for p in probs if p > 0.0)
    return min(max(entropy / math.log(len(probs)), 0.0), 1.0)


def _per_token(token: TokenEvidence) -> tuple[float, float, float]:
    """(clean logprob, top-1 minus top-2 probability, normalised top-k entropy) of one position, in one pass.

    The margin reads the top list with the chosen token (counted once, as `confidence.score_margin` does);
    the entropy reads the top list alone (the chosen token when there is none). Top values come from
    `logprobs.token_evidence`, which never passes NaN on.
    """
    chosen = _logprob(token.logprob)
    tops = token.top_logprobs
    if not tops:
        return chosen, math.exp(chosen), 0.0
    probs = [math.exp(v) if v < 0.0 else 1.0 for v in tops]
    candidates = probs if any(abs(v - token.logprob) <= 1e-6 for v in tops) else [*probs, math.exp(chosen)]
    ordered = sorted(candidates, reverse=True)
    return chosen, ordered[0] - (ordered[1] if len(ordered) > 1 else 0.0), _normalised_entropy(probs)


def token_features(tokens: Sequence[TokenEvidence], prompt_tokens: int) -> dict[ScoreFeature, float]:
    """Every token feature of the scored tokens; an empty span gives the values of total doubt (probabilities 0)."""
    log_prompt = math.log1p(max(prompt_tokens, 0))
    if not tokens:
        zeros = dict.fromkeys(
            (
                ScoreFeature.prob_quantile_05,
                ScoreFeature.prob_quantile_10,
                ScoreFeature.prob_quantile_25,
                ScoreFeature.prob_quantile_50,
                ScoreFeature.min_prob,
                ScoreFeature.mean_prob,
                ScoreFeature.mean_margin,
                ScoreFeature.min_margin,
            ),
            0.0,
        )
        return zeros | {
            ScoreFeature.mean_logprob: _LOGPROB_FLOOR,
            ScoreFeature.mean_entropy: 1.0,
            ScoreFeature.log_answer_tokens: 0.0,
            ScoreFeature.log_prompt_tokens: log_prompt,
        }
    logprobs, margins, entropies = zip(*map(_per_token, tokens), strict=True)
    probs = sorted(map(math.exp, logprobs))
    count = len(tokens)
    return {
        ScoreFeature.prob_quantile_05: _quantile(probs, 0.05),
        ScoreFeature.prob_quantile_10: _quantile(probs, 0.10),
        ScoreFeature.prob_quantile_25: _quantile(probs, 0.25),
        ScoreFeature.prob_quantile_50: _quantile(probs, 0.50),
        ScoreFeature.min_prob: probs[0],
        ScoreFeature.mean_prob: sum(probs) / count,
        ScoreFeature.mean_logprob: sum(logprobs) / count,
        ScoreFeature.mean_margin: sum(margins) / count,
        ScoreFeature.min_margin: min(margins),
        ScoreFeature.mean_entropy: sum(entropies) / count,
        ScoreFeature.log_answer_tokens: math.log1p(count),
        ScoreFeature.log_prompt_tokens: log_prompt,
    }


def class_features(probs: Sequence[float], prompt_tokens: int) -> dict[ScoreFeature, float]:
    """Every classify feature of the label probabilities."""
    clean = sorted((min(max(float(p), 0.0), 1.0) for p in probs if not math.isnan(float(p))), reverse=True)
    first = clean[0] if clean else 0.0
    second = clean[1] if len(clean) > 1 else 0.0
    return {
        ScoreFeature.max_prob: first,
        ScoreFeature.class_margin: first - second,
        ScoreFeature.label_entropy: _normalised_entropy(clean) if clean else 1.0,
        ScoreFeature.log_prompt_tokens: math.log1p(max(prompt_tokens, 0)),
    }


def learned_score(params: LearnedScore, features: Mapping[ScoreFeature, float]) -> float:
    """sigmoid(bias + sum_i w_i x_i), in [0, 1]; computed stably for large |z|."""
    z = params.bias + sum(weight * features[name] for name, weight in zip(params.features, params.weights, strict=True))
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
