"""The cascade's decision: keep a tier's answer, or escalate to the next tier.

Pure: a score and a threshold in, a `Decision` out. The router does the I/O
and reports the decision (confidence, threshold) in its `x-kascade-*` headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kascade.api.modelcascade import Accept, ConfidenceMethod, ScoredSpan
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.logprobs import TokenEvidence
from kascade.runtime.scoring.confidence import score, score_tokens
from kascade.runtime.scoring.spans import prompt_text


@dataclass(frozen=True)
class Decision:
    """Whether a tier's answer stands, and the numbers it was decided on."""

    accept: bool
    confidence: float
    threshold: float
    method: ConfidenceMethod


def decide(accept: Accept, confidence: float) -> Decision:
    """Accept iff `confidence >= accept.threshold`: an answer exactly at the threshold stands.

    A NaN confidence never accepts (every comparison with NaN is false).
    """
    return Decision(
        accept=confidence >= accept.threshold,
        confidence=confidence,
        threshold=accept.threshold,
        method=accept.method,
    )


def judge(
    accept: Accept, endpoint: Endpoint, response: dict[str, Any], request: dict[str, Any] | None = None
) -> Decision:
    """Score a tier's whole response to `request` and decide on it."""
    return decide(accept, score(accept, endpoint, response, request))


def judge_tokens(accept: Accept, tokens: Sequence[TokenEvidence], request: dict[str, Any] | None = None) -> Decision:
    """Score token evidence (a streamed prefix in early mode) and decide on it."""
    prompt = prompt_text(request) if accept.span is ScoredSpan.not_copied else ""
    return decide(accept, score_tokens(accept, tokens, prompt=prompt))
