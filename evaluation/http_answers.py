"""Answers of an `external` tier (an OpenAI-compatible API: vLLM, a hosted model) over HTTP, with logprobs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

from kascade.api.modelcascade import Tier
from kascade.evaluation.records import Example, TierAnswer
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.local.manifest import secret_env_var
from kascade.runtime.logprobs import choice_token_evidence

if TYPE_CHECKING:
    from kascade.evaluation.collect import GenerationSettings


def ask_over_http(
    tier: Tier, batch: Sequence[Example], *, settings: GenerationSettings, classify: bool
) -> list[TierAnswer]:
    """One request per example, sent concurrently; any HTTP error stops the evaluation with its message."""
    from kascade.evaluation.collect import EvaluationError

    headers = {}
    if tier.api_key_secret is not None and (key := os.environ.get(secret_env_var(tier.api_key_secret))):
        headers["Authorization"] = f"Bearer {key}"
    base = tier.model.uri.rstrip("/")

    def ask(example: Example) -> TierAnswer:
        body: dict[str, Any]
        if classify:
            url, body = f"{base.removesuffix('/v1')}/classify", {"model": tier.served_name, "input": [example.input]}
        elif example.messages is not None:
            url, body = f"{base}/chat/completions", {"model": tier.served_name, "messages": list(example.messages)}
        else:
            url, body = f"{base}/completions", {"model": tier.served_name, "prompt": example.prompt}
        if not classify:
            body |= {
                "temperature": 0,
                "max_tokens": settings.max_tokens,
                "stop": list(settings.stop) or None,
                "logprobs": True if example.messages is not None else settings.top_logprobs,
            }
            if example.messages is not None:
                body["top_logprobs"] = settings.top_logprobs
        try:
            response = httpx.post(url, json=body, headers=headers, timeout=600)
        except httpx.HTTPError as exc:
            raise EvaluationError(f"tier {tier.name}: {url} could not be reached: {exc}") from None
        if response.status_code != 200:
            raise EvaluationError(f"tier {tier.name}: {url} answered {response.status_code}: {response.text[:300]}")
        return _answer(response.json(), classify=classify)

    with ThreadPoolExecutor(max_workers=max(1, len(batch))) as pool:
        return list(pool.map(ask, batch))


def _answer(body: dict[str, Any], *, classify: bool) -> TierAnswer:
    usage = body.get("usage") or {}
    if classify:
        data = body["data"][0]
        return TierAnswer(
            text=str(data["label"]),
            label=str(data["label"]),
            probs=tuple(data["probs"]),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
        )
    choice = body["choices"][0]
    # The router's own reader of vLLM's logprobs layout (malformed positions dropped, as the router drops them).
    if "message" in choice:  # chat
        evidence = choice_token_evidence(Endpoint.chat, choice)
        text = (choice.get("message") or {}).get("content") or ""
        tops = tuple(e.top_logprobs for e in evidence)
    else:
        evidence = choice_token_evidence(Endpoint.completion, choice)
        text = choice.get("text") or ""
        tops = tuple(tuple(sorted(e.top_logprobs, reverse=True)) for e in evidence)
    tokens = tuple(e.text for e in evidence)
    chosen = tuple(e.logprob for e in evidence)
    return TierAnswer(
        text=text,
        tokens=tokens,
        logprobs=chosen,
        top_logprobs=tops,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", len(tokens))),
        finish_reason=str(choice.get("finish_reason") or "stop"),
    )
