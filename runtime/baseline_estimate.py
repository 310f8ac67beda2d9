"""The savings baseline corrected by what shadow samples measure of the last tier's answers. Pure.

The ledger counts the token figures (`kascade.runtime.ledger.BASELINE_TOKEN_KEYS`);
the operator turns them into `status.cost.estimatedBaseline`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kascade.api.modelcascade import Price
from kascade.runtime.ledger import usage_cost

MIN_SHADOW_SAMPLES_FOR_AN_ESTIMATE = 30


@dataclass(frozen=True)
class BaselineEstimate:
    baseline: float  # the savings baseline with the last tier's measured token counts
    input_ratio: float  # the last tier's tokens per token of the accepted answers (ratio of sums)
    output_ratio: float


def estimated_baseline(
    baseline: float, tokens: Mapping[str, int], shadow_calls: int, last: Price
) -> BaselineEstimate | None:
    """The baseline corrected by what shadow samples measure of the last tier's token counts; None with too few.

    The ledger's baseline prices an accepted answer's own tokens at the last
    tier's price, as if the last tier would have answered at the same length.
    Shadow samples measure how long its answers really are on the same
    requests: r = Σ last tier's tokens / Σ the accepted answers' tokens (a
    ratio estimator, per input and output), and the accepted part of the
    baseline is scaled by r: baseline + (r_in - 1)·p_in·A_in + (r_out - 1)·p_out·A_out,
    with A the accepted answers' tokens and p the last tier's per-token prices.
    """
    if shadow_calls < MIN_SHADOW_SAMPLES_FOR_AN_ESTIMATE:
        return None
    ratios = []
    for side in ("Input", "Output"):
        answered, measured = tokens.get(f"shadowAnswered{side}", 0), tokens.get(f"shadowLast{side}", 0)
        ratios.append(measured / answered if answered > 0 else 1.0)
    extra = (ratios[0] - 1) * usage_cost(last, tokens.get("acceptedInput", 0), 0) + (ratios[1] - 1) * usage_cost(
        last, 0, tokens.get("acceptedOutput", 0)
    )
    return BaselineEstimate(baseline=max(baseline + extra, 0.0), input_ratio=ratios[0], output_ratio=ratios[1])
