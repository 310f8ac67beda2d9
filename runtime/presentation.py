"""What the caller is sent: a tier's answer under an honest model name, with only the logprobs asked for.

Pure shaping of response bodies and stream chunks; the router asks tiers for
more than the caller did (logprobs to score, usage for the ledger), and this is
where the extra is taken off again. A complete answer can also be replayed as a
stream, for a streaming caller whose answer was scored whole (buffer mode).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from kascade.runtime.engines.base import Endpoint
from kascade.runtime.logprobs import strip_unrequested_logprobs


def caller_wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def present(
    endpoint: Endpoint, caller_body: dict[str, Any], served_model: str, response: dict[str, Any]
) -> dict[str, Any]:
    presented = strip_unrequested_logprobs(endpoint, caller_body, response)
    presented["model"] = served_model
    return presented


def present_chunk(
    endpoint: Endpoint, caller_body: dict[str, Any], served_model: str, chunk: dict[str, Any], wants_usage: bool
) -> dict[str, Any] | None:
    """A stream chunk as the caller gets it, or None for a chunk the caller did not ask for."""
    if not chunk:
        return None
    presented = present(endpoint, caller_body, served_model, chunk)
    if not wants_usage:
        if not presented.get("choices"):
            return None  # the usage-only chunk the router asked for on its own
        presented.pop("usage", None)
    return presented


async def replay_as_chunks(
    endpoint: Endpoint, caller_body: dict[str, Any], response: dict[str, Any]
) -> AsyncIterator[dict[str, Any]]:
    """A complete answer sent as a stream: role, content, finish, and usage if the caller asked."""
    chat = endpoint is Endpoint.chat
    base = {
        "id": response.get("id", ""),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": response.get("created", int(time.time())),
        "model": response.get("model"),
    }
    choices = [choice for choice in response.get("choices", []) if isinstance(choice, dict)]
    for choice in choices:
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            yield {
                **base,
                "choices": [
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
            delta = {key: value for key, value in message.items() if key != "role" and value is not None}
            yield {
                **base,
                "choices": [
                    {"index": index, "delta": delta, "logprobs": choice.get("logprobs"), "finish_reason": None}
                ],
            }
            yield {
                **base,
                "choices": [
                    {"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}
                ],
            }
        else:
            yield {
                **base,
                "choices": [
                    {
                        "index": index,
                        "text": choice.get("text", ""),
                        "logprobs": choice.get("logprobs"),
                        "finish_reason": None,
                    }
                ],
            }
            yield {
                **base,
                "choices": [
                    {"index": index, "text": "", "logprobs": None, "finish_reason": choice.get("finish_reason")}
                ],
            }
    if caller_wants_usage(caller_body) and isinstance(response.get("usage"), dict):
        yield {**base, "choices": [], "usage": response["usage"]}
