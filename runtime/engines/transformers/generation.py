"""The decode loop: one forward pass per token over a KV cache, each step yielding its token, logprobs and text.

A plain loop rather than `model.generate`, so streaming, stop strings,
logprobs and cancellation fall out naturally. It runs in a worker thread
(see engine.py) with the model to itself.
"""

from __future__ import annotations

import inspect
import random
import threading
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any

from kascade.runtime.engines.transformers.decoding import OutputText, TokenStep, TokenTexts
from kascade.runtime.engines.transformers.sampling import SamplingParams, sample_next_token
from kascade.runtime.engines.vllm_layout import TokenLogprobs

if TYPE_CHECKING:
    import torch


def cache_keyword(model: Any) -> str:
    """The keyword the model's forward takes its KV cache by, which is also its output's key.

    transformers renamed `past_key_values` to `cache` (the old name warns and
    goes in 5.40); earlier 5.x releases know only the old one.
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def seeded_generator(device: Any, seed: int | None) -> torch.Generator:
    """A generator on `device`, seeded by the request or at random."""
    import torch

    generator = torch.Generator(device=device)
    # Any JSON integer is a valid seed; torch wants one that fits in 64 bits.
    generator.manual_seed(seed % 2**64 if seed is not None else random.randrange(2**63))
    return generator


def token_id_name(token_id: int) -> str:
    """How vLLM names a token when asked for `return_tokens_as_token_ids`."""
    return f"token_id:{token_id}"


def position_logprobs(
    logits: torch.Tensor, token_id: int, top_k: int, token_texts: Callable[[int], str]
) -> TokenLogprobs:
    """The chosen token's logprob and the `top_k` most likely tokens at one position; `logits` has shape [vocab].

    Raw logprobs of the model's own distribution, before penalties,
    temperature and top-p: what vLLM returns by default.
    """
    import torch

    raw = torch.log_softmax(logits, dim=-1)
    top: tuple[tuple[str, float], ...] = ()
    if top_k:
        values, ids = torch.topk(raw, min(top_k, raw.numel()))
        top = tuple(zip(map(token_texts, ids.tolist()), values.tolist(), strict=True))
    return TokenLogprobs(token_texts(token_id), float(raw[token_id]), top)


def score_prompt(
    model: Any, prompt_ids: list[int], top_k: int, device: Any, token_texts: Callable[[int], str]
) -> list[dict[int, tuple[float, int, str]] | None]:
    """vLLM's prompt logprobs: None for the first token; then, per position, the token's (logprob, rank, text)
    and the `top_k` most likely tokens', from the raw distribution given the tokens before it."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt_ids], device=device)).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    scored: list[dict[int, tuple[float, int, str]] | None] = [None]
    for position, token_id in enumerate(prompt_ids[1:]):
        row = logprobs[position]
        entries: dict[int, tuple[float, int, str]] = {}
        if top_k:
            values, ids = torch.topk(row, min(top_k, row.numel()))
            for rank, (value, top_id) in enumerate(zip(values.tolist(), ids.tolist(), strict=True), 1):
                entries[top_id] = (value, rank, token_texts(top_id))
        if token_id not in entries:
            rank = int((row > row[token_id]).sum()) + 1
            entries = {token_id: (float(row[token_id]), rank, token_texts(token_id)), **entries}
        scored.append(entries)
    return scored


def generate_steps(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int],
    params: SamplingParams,
    *,
    device: Any,
    stop_token_ids: Collection[int],
    token_texts: TokenTexts,
    cancelled: threading.Event,
) -> Iterator[TokenStep]:
    """Up to `params.max_tokens` steps; stops early at a stop token or string, or when `cancelled` is set."""
    import torch

    assert params.max_tokens is not None
    generator = seeded_generator(device, params.seed)
    output = OutputText(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), params.stop, stop_token_ids)
    output_counts: dict[int, int] = {}
    cache_key = cache_keyword(model)
    names: Callable[[int], str] = token_id_name if params.tokens_as_ids else token_texts
    cache = None
    input_ids = torch.tensor([prompt_ids], device=device)
    with torch.inference_mode():
        for index in range(params.max_tokens):
            if cancelled.is_set():
                return
            out = model(input_ids=input_ids, use_cache=True, **{cache_key: cache})
            cache = out[cache_key]
            logits = out.logits[0, -1].float()
            token_id = sample_next_token(logits, params, generator, output_counts)
            output_counts[token_id] = output_counts.get(token_id, 0) + 1
            text, finish = output.push(token_id, last=index == params.max_tokens - 1)
            scored = None if params.logprobs is None else position_logprobs(logits, token_id, params.logprobs, names)
            yield TokenStep(token_id, names(token_id), scored, text, finish, output.stop_reason)
            if finish is not None:
                return
            input_ids = torch.tensor([[token_id]], device=device)
