"""Confidence scores: how sure a tier was of its own answer, as a number in [0, 1].

Pure functions of the tier's logprobs (or label probabilities); no I/O. Shared
conventions, so every score reads the same way:

- No evidence (no tokens, no probabilities) scores 0.0: with nothing to judge
  by, the request escalates rather than trusting an unscored answer.
- A logprob of -inf is probability 0; a logprob above 0 (float error in the
  engine) is probability 1; NaN counts as probability 0.
- Results are clamped into [0, 1] so float error can never cross a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from kascade.api.modelcascade import Accept, ConfidenceMethod, ScoredSpan
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.logprobs import TokenEvidence, class_probs, token_evidence
from kascade.runtime.scoring.features import class_features, learned_score, token_features
from kascade.runtime.scoring.spans import prompt_text, select_span

# Two logprobs closer than this are taken to be the same token: the evidence
# holds values, not token ids, and engines report the sampled token's logprob
# and its top-list entry from the same tensor.
_SAME_TOKEN_TOLERANCE = 1e-6


def _clamp(value: float) -> float:
    if math.isnan(value):
        return 0.0
    return min(max(value, 0.0), 1.0)


def _clean_logprob(logprob: float) -> float:
    """A logprob in [-inf, 0]: NaN becomes -inf, float-error positives become 0."""
    if math.isnan(logprob):
        return -math.inf
    return min(logprob, 0.0)


def _prob(logprob: float) -> float:
    return math.exp(_clean_logprob(logprob))


def _candidates(token: TokenEvidence) -> list[float]:
    """Probabilities of top_logprobs ∪ {chosen}, the chosen one counted once.

    The chosen token joins the top list only when no entry already carries its
    logprob: vLLM and OpenAI list the sampled token among the top ones when it
    ranks there, and only values are known here.
    """
    top = [_clean_logprob(value) for value in token.top_logprobs]
    chosen = _clean_logprob(token.logprob)
    if not any(
        value == chosen or math.isclose(value, chosen, rel_tol=0.0, abs_tol=_SAME_TOKEN_TOLERANCE) for value in top
    ):
        top.append(chosen)
    return [math.exp(value) for value in top]


def score_geometric_mean(tokens: Sequence[TokenEvidence]) -> float:
    """exp(mean_i logprob_i): the geometric mean of the chosen tokens' probabilities.

    Unlike the joint probability (a sum of logprobs) it does not shrink with
    answer length.
    """
    if not tokens:
        return 0.0
    count = len(tokens)
    # Dividing each term first keeps the sum finite for huge negative logprobs.
    mean = sum(_clean_logprob(token.logprob) / count for token in tokens)
    return _clamp(math.exp(mean))


def score_min_token_prob(tokens: Sequence[TokenEvidence]) -> float:
    """exp(min_i logprob_i): the probability of the least likely chosen token."""
    if not tokens:
        return 0.0
    return _clamp(math.exp(min(_clean_logprob(token.logprob) for token in tokens)))


def _quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of `values` by linear interpolation (numpy's default, "linear").

    With the values sorted as v_0 <= ... <= v_{n-1}: position h = q (n - 1),
    result v_floor(h) + (h - floor(h)) (v_ceil(h) - v_floor(h)).
    """
    ordered = sorted(values)
    position = min(max(q, 0.0), 1.0) * (len(ordered) - 1)
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def score_quantile(tokens: Sequence[TokenEvidence], q: float) -> float:
    """The q-quantile (linear interpolation, as numpy) of the chosen tokens' probabilities exp(logprob_i).

    A low quantile (q = 0.1) looks at the weakest tokens like the minimum
    does, but one stray unlikely token does not decide alone.
    """
    if not tokens:
        return 0.0
    return _clamp(_quantile([_prob(token.logprob) for token in tokens], q))


def score_margin(tokens: Sequence[TokenEvidence]) -> float:
    """mean_i (p1_i - p2_i), where p1_i >= p2_i are the two highest probabilities among
    top_logprobs_i ∪ {chosen_i}; a position with a single candidate counts p1_i - 0.

    Needs top_logprobs >= 2 from the engine to mean anything.
    """
    if not tokens:
        return 0.0
    margins: list[float] = []
    for token in tokens:
        probs = sorted(_candidates(token), reverse=True)
        second = probs[1] if len(probs) > 1 else 0.0
        margins.append(probs[0] - second)
    return _clamp(sum(margins) / len(margins))


def _normalised_entropy(probs: Sequence[float]) -> float:
    """H(p̂) / log(k) of `probs` renormalised to sum 1, k = len(probs); 0 when k == 1.

    When every probability is 0 nothing is known: the maximum, 1.
    """
    k = len(probs)
    if k <= 1:
        return 0.0
    total = sum(probs)
    if total <= 0.0:
        return 1.0
    entropy = -sum((p / total) * math.log(p / total) for p in probs if p > 0.0)
    return min(max(entropy / math.log(k), 0.0), 1.0)


def score_entropy(tokens: Sequence[TokenEvidence]) -> float:
    """1 - mean_i H(p̂_i) / log(k_i), where p̂_i is the top-k distribution at position i
    renormalised to sum 1 and k_i its size.

    The top-k distribution is top_logprobs_i when the engine sent any, else the
    chosen token alone (k = 1, normalised entropy 0). Needs top_logprobs >= 2
    to mean anything; 5 is the usual request.
    """
    if not tokens:
        return 0.0
    entropies = [
        _normalised_entropy([_prob(value) for value in token.top_logprobs] or [_prob(token.logprob)])
        for token in tokens
    ]
    return _clamp(1.0 - sum(entropies) / len(entropies))


def _clean_probs(probs: Sequence[float]) -> list[float]:
    return [_clamp(float(p)) for p in probs]


def score_max_prob(probs: Sequence[float]) -> float:
    """max_j p_j: the probability of the predicted label."""
    if not probs:
        return 0.0
    return max(_clean_probs(probs))


def score_class_margin(probs: Sequence[float]) -> float:
    """p1 - p2, the two highest label probabilities (p2 = 0 with a single class)."""
    if not probs:
        return 0.0
    ordered = sorted(_clean_probs(probs), reverse=True)
    second = ordered[1] if len(ordered) > 1 else 0.0
    return _clamp(ordered[0] - second)


TokenScorer = Callable[[Sequence[TokenEvidence], Accept], float]
ClassScorer = Callable[[Sequence[float]], float]

# Generative methods: scorers of token evidence. The Accept rule is passed
# along for the parameters some methods take (the quantile's q).
TOKEN_SCORERS: Mapping[ConfidenceMethod, TokenScorer] = MappingProxyType(
    {
        ConfidenceMethod.geometric_mean: lambda tokens, accept: score_geometric_mean(tokens),
        ConfidenceMethod.min_token: lambda tokens, accept: score_min_token_prob(tokens),
        ConfidenceMethod.quantile: lambda tokens, accept: score_quantile(tokens, accept.quantile),
        ConfidenceMethod.margin: lambda tokens, accept: score_margin(tokens),
        ConfidenceMethod.entropy: lambda tokens, accept: score_entropy(tokens),
    }
)

# Classify methods: scorers of the label probabilities.
CLASS_SCORERS: Mapping[ConfidenceMethod, ClassScorer] = MappingProxyType(
    {
        ConfidenceMethod.max_prob: score_max_prob,
        ConfidenceMethod.class_margin: score_class_margin,
    }
)

# How many top alternatives per token each method needs from the engine.
_REQUIRED_TOP_LOGPROBS: Mapping[ConfidenceMethod, int] = MappingProxyType(
    {
        ConfidenceMethod.geometric_mean: 0,
        ConfidenceMethod.min_token: 0,
        ConfidenceMethod.quantile: 0,
        ConfidenceMethod.margin: 2,
        ConfidenceMethod.entropy: 5,
        ConfidenceMethod.max_prob: 0,
        ConfidenceMethod.class_margin: 0,
        ConfidenceMethod.learned: 5,  # its margin and entropy features read the top-k
    }
)


def required_top_logprobs(method: ConfidenceMethod) -> int:
    """The `top_logprobs` count to ask the tier for so that `method` can score its answer."""
    return _REQUIRED_TOP_LOGPROBS[method]


def score_tokens(accept: Accept, tokens: Sequence[TokenEvidence], *, prompt: str = "", prompt_tokens: int = 0) -> float:
    """Score token evidence with the accept rule's method, over the rule's span (early mode scores a prefix).

    `prompt` (the request's text) is read by span notCopied; `prompt_tokens`
    by the learned score's logPromptTokens. An empty span scores 0.0.
    Raises ValueError for a classify method: those score label probabilities.
    """
    scored = select_span(tokens, accept.span, prompt) if accept.span is not ScoredSpan.all else tokens
    if accept.method is ConfidenceMethod.learned:
        assert accept.learned is not None
        return learned_score(accept.learned, token_features(scored, prompt_tokens)) if scored else 0.0
    scorer = TOKEN_SCORERS.get(accept.method)
    if scorer is None:
        raise ValueError(
            f"confidence method {accept.method.value!r} scores classify label probabilities, not tokens; "
            f"use one of {sorted(method.value for method in TOKEN_SCORERS)}"
        )
    return scorer(scored, accept)


def score_class_probs(accept: Accept, probs: Sequence[float], *, prompt_tokens: int = 0) -> float:
    """Score label probabilities with the accept rule's classify method (or the learned score)."""
    if accept.method is ConfidenceMethod.learned:
        assert accept.learned is not None
        return learned_score(accept.learned, class_features(probs, prompt_tokens)) if probs else 0.0
    return CLASS_SCORERS[accept.method](probs)


def _prompt_tokens(response: dict[str, Any]) -> int:
    usage = response.get("usage") if isinstance(response, dict) else None
    count = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def score(accept: Accept, endpoint: Endpoint, response: dict[str, Any], request: dict[str, Any] | None = None) -> float:
    """Score a tier's whole response to `request` with the accept rule's method.

    Classify reads the label probabilities, the others the token logprobs of
    choice 0; a response without them scores 0.0. The request is read only
    by span notCopied (the prompt's text).
    """
    classify_rule = accept.method in CLASS_SCORERS or (
        accept.method is ConfidenceMethod.learned and endpoint is Endpoint.classify
    )
    if classify_rule:
        return score_class_probs(accept, class_probs(response), prompt_tokens=_prompt_tokens(response))
    prompt = prompt_text(request) if accept.span is ScoredSpan.not_copied else ""
    return score_tokens(
        accept, token_evidence(endpoint, response), prompt=prompt, prompt_tokens=_prompt_tokens(response)
    )
