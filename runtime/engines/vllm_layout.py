"""vLLM's response bodies, written: what an engine (or a test double) sends back.

`kascade.runtime.logprobs` reads these layouts; this module is their one
writer, shared by the in-process transformers engine and the fixed-answer
test server, so both answer exactly as vLLM's OpenAI-compatible server does.
Plain dicts in, plain JSON-ready dicts out; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MIN_LOGPROB = -9999.0  # vLLM clamps -inf so the JSON stays valid


@dataclass(frozen=True)
class TokenLogprobs:
    """One generated token with its logprob and the k most likely tokens at its position (most likely first)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


def _clamp(logprob: float) -> float:
    return max(logprob, MIN_LOGPROB)


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_logprobs(tokens: Sequence[TokenLogprobs]) -> dict[str, Any]:
    """`{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}`, one per token."""
    content = [
        {
            "token": scored.token,
            "logprob": _clamp(scored.logprob),
            "bytes": _utf8(scored.token),
            "top_logprobs": [{"token": t, "logprob": _clamp(lp), "bytes": _utf8(t)} for t, lp in scored.top],
        }
        for scored in tokens
    ]
    return {"content": content}


def completion_logprobs(tokens: Sequence[TokenLogprobs], initial_text_offset: int = 0) -> dict[str, Any]:
    """The legacy layout: parallel lists; each `top_logprobs` dict holds the chosen token and the top k."""
    result: dict[str, list[Any]] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    offset = initial_text_offset
    for scored in tokens:
        result["text_offset"].append(offset)
        result["token_logprobs"].append(_clamp(scored.logprob))
        result["tokens"].append(scored.token)
        top = {scored.token: _clamp(scored.logprob)}
        for token, logprob in scored.top:
            top.setdefault(token, _clamp(logprob))
        result["top_logprobs"].append(top)
        offset += len(scored.token)
    return result


def prompt_logprobs(positions: Sequence[dict[int, tuple[float, int, str]] | None]) -> list[dict[str, Any] | None]:
    """vLLM's `prompt_logprobs`: per prompt position None (the first) or {token id: {logprob, rank, decoded_token}}."""
    return [
        None
        if entries is None
        else {
            str(token_id): {"logprob": _clamp(logprob), "rank": rank, "decoded_token": text}
            for token_id, (logprob, rank, text) in entries.items()
        }
        for entries in positions
    ]


@dataclass(frozen=True)
class ResponseHeader:
    """The fields every response and every chunk of one request repeat."""

    id: str
    created: int
    model: str

    def fields(self, object_name: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model}


def chat_completion(
    header: ResponseHeader,
    text: str,
    *,
    logprobs: dict[str, Any] | None,
    finish_reason: str | None,
    stop_reason: str | None,
    token_usage: dict[str, int],
) -> dict[str, Any]:
    answer = {"message": {"role": "assistant", "content": text}}
    return _completion(header, "chat.completion", answer, logprobs, finish_reason, stop_reason, token_usage)


def text_completion(
    header: ResponseHeader,
    text: str,
    *,
    logprobs: dict[str, Any] | None,
    finish_reason: str | None,
    stop_reason: str | None,
    token_usage: dict[str, int],
) -> dict[str, Any]:
    return _completion(header, "text_completion", {"text": text}, logprobs, finish_reason, stop_reason, token_usage)


def _completion(
    header: ResponseHeader,
    object_name: str,
    answer: dict[str, Any],
    logprobs: dict[str, Any] | None,
    finish_reason: str | None,
    stop_reason: str | None,
    token_usage: dict[str, int],
) -> dict[str, Any]:
    """One choice, in vLLM's key order: index, the answer (message or text), logprobs, finish and stop reasons."""
    choice = {"index": 0, **answer, "logprobs": logprobs, "finish_reason": finish_reason, "stop_reason": stop_reason}
    return {**header.fields(object_name), "choices": [choice], "usage": token_usage}


def chat_role_chunk(header: ResponseHeader) -> dict[str, Any]:
    """The first chunk of a chat stream: the role, no text yet."""
    choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    return {**header.fields("chat.completion.chunk"), "choices": [choice]}


def chat_chunk(
    header: ResponseHeader,
    text: str | None,
    *,
    logprobs: dict[str, Any] | None,
    finish_reason: str | None,
    stop_reason: str | None = None,
) -> dict[str, Any]:
    """One chat stream chunk; `text=None` sends an empty delta (a closing chunk)."""
    choice = {
        "index": 0,
        "delta": {} if text is None else {"content": text},
        "logprobs": logprobs,
        "finish_reason": finish_reason,
        "stop_reason": stop_reason,
    }
    return {**header.fields("chat.completion.chunk"), "choices": [choice]}


def completion_chunk(
    header: ResponseHeader,
    text: str,
    *,
    logprobs: dict[str, Any] | None,
    finish_reason: str | None,
    stop_reason: str | None = None,
) -> dict[str, Any]:
    choice = {
        "index": 0,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
        "stop_reason": stop_reason,
    }
    return {**header.fields("text_completion"), "choices": [choice]}


def usage_chunk(header: ResponseHeader, *, chat: bool, token_usage: dict[str, int]) -> dict[str, Any]:
    """The closing chunk when the caller asked for `stream_options.include_usage`."""
    return {
        **header.fields("chat.completion.chunk" if chat else "text_completion"),
        "choices": [],
        "usage": token_usage,
    }


def class_result(index: int, probs: Sequence[float], labels: Sequence[str]) -> dict[str, Any]:
    """One input's result: the most likely label, every label's probability."""
    best = max(range(len(probs)), key=probs.__getitem__)
    return {"index": index, "label": labels[best], "probs": list(probs), "num_classes": len(probs)}


def classification(header: ResponseHeader, results: list[dict[str, Any]], prompt_tokens: int) -> dict[str, Any]:
    """vLLM's classify response; classification generates no tokens."""
    return {
        **header.fields("list"),
        "data": results,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0},
    }
