"""A request's prompt as token ids, and how many tokens the context leaves for the answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from kascade.runtime.engines.base import Endpoint
from kascade.runtime.engines.transformers.requests import Prompt, bad_request
from kascade.runtime.engines.transformers.sampling import SamplingParams

DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16  # vLLM's (and OpenAI's) default for /v1/completions


def fallback_chat_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt for tokenizers that ship no chat template.

    One `role: content` line per message, then `assistant:` for the model to
    continue. Plain and model-agnostic; a real chat model should carry its own
    template (transformers' `chat_template`), which always wins.
    """
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of a prompt text, of token ids (checked against the vocabulary) or of chat messages."""
    if isinstance(prompt, str):
        ids = tokenizer(prompt)["input_ids"]  # special tokens added, as vLLM does for completions
    elif prompt and isinstance(prompt[0], int):
        vocab = len(tokenizer)
        if any(not 0 <= t < vocab for t in prompt):
            raise bad_request(f"prompt token ids must lie in [0, {vocab})", "prompt")
        ids = list(prompt)
    else:
        ids = tokenizer(_chat_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]  # type: ignore[arg-type]
    if not ids:
        raise bad_request("the prompt is empty after tokenization", "prompt")
    return list(ids)


def _chat_text(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    if not getattr(tokenizer, "chat_template", None):
        return fallback_chat_prompt(messages)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template's own raise_exception(): the messages are at fault
        raise bad_request(f"the chat template refused these messages: {exc}", "messages") from exc


def fit_max_tokens(params: SamplingParams, prompt_len: int, max_model_len: int, endpoint: Endpoint) -> SamplingParams:
    """`params` with `max_tokens` set: the endpoint's default when absent, capped by the context the prompt leaves.

    A prompt that fills the context, or a `max_tokens` that does not fit
    beside it, is the caller's error (400), worded as vLLM words it.
    """
    room = max_model_len - prompt_len
    if room <= 0:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, your request "
            f"has {prompt_len} input tokens. Please reduce the length of the input messages.",
            "messages" if endpoint is Endpoint.chat else "prompt",
        )
    if params.max_tokens is None:
        default = DEFAULT_CHAT_MAX_TOKENS if endpoint is Endpoint.chat else DEFAULT_COMPLETION_MAX_TOKENS
        return replace(params, max_tokens=min(default, room))
    if params.max_tokens > room:
        raise bad_request(
            f"'max_tokens' or 'max_completion_tokens' is too large: {params.max_tokens}. This model's "
            f"maximum context length is {max_model_len} tokens and your request has {prompt_len} "
            f"input tokens ({params.max_tokens} > {max_model_len} - {prompt_len}).",
            "max_tokens",
        )
    return params
