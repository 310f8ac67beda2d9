"""The sampling parameters of one request, and the sampler that applies them in vLLM's order."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

GREEDY_BELOW = 1e-5  # vLLM samples greedily below this temperature


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None  # None: the endpoint's default, capped by the context left
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: no logprobs; k: the chosen token's and the k most likely
    tokens_as_ids: bool = False  # logprobs name tokens `token_id:<id>` (vLLM's return_tokens_as_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def sample_next_token(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    output_counts: Mapping[int, int],
) -> int:
    """Pick the next token from one step's logits, shape [vocab], in vLLM's order.

    Penalties on tokens already generated, then temperature, top-k, top-p,
    then a draw from `generator`. Greedy (temperature ~0) takes the argmax of
    the penalised logits.
    """
    import torch

    if output_counts and (params.presence_penalty or params.frequency_penalty):
        ids = torch.tensor(list(output_counts), device=logits.device)
        counts = torch.tensor(list(output_counts.values()), device=logits.device, dtype=logits.dtype)
        logits = logits.clone()
        logits[ids] -= params.frequency_penalty * counts + params.presence_penalty
    if params.greedy:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if 0 < params.top_k < logits.numel():
        kth_best = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already hold top_p of the mass (the first always stays).
        drop = (torch.cumsum(probs, dim=-1) - probs) > params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
