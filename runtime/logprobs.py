"""vLLM/OpenAI logprobs on the wire: read them, ask for them, hide the ones the caller did not ask for.

Everything here works on plain dicts exactly as vLLM's OpenAI-compatible server
sends them, and never raises on an odd shape: an engine that answers with a
missing or malformed `logprobs` block simply yields no evidence, and no
evidence scores 0 (the request escalates) instead of failing.

This is the one reader of the layout: the scores take each token's evidence
(`token_evidence`), the escalation log the names of the top entries too
(`choice_token_evidence(..., with_names=True)`: teacher tokens by id), an LLM
judge's verdict its first token's alternatives (`first_token_alternatives`).

Layouts (choice 0 of a response or of one SSE chunk):

- chat: `choices[0]["logprobs"]["content"] = [{"token", "logprob", "bytes",
  "top_logprobs": [{"token", "logprob", "bytes"}, ...]}, ...]`
- completion: `choices[0]["logprobs"] = {"tokens": [...], "token_logprobs": [...],
  "top_logprobs": [{token: logprob, ...} | None, ...], "text_offset": [...]}`
- classify: `{"data": [{"index", "label", "probs": [...], "num_classes"}]}`
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kascade.runtime.engines.base import Endpoint


@dataclass(frozen=True)
class TokenEvidence:
    """What the tier said about one generated token.

    `top_logprobs` holds the logprobs of the top-k alternatives at that
    position, in any order; it may include the chosen token and may be empty.
    `text` is the token's own text as the engine names it ("" when it sent
    none); the scored span is found in the concatenation of these texts.
    """

    logprob: float
    top_logprobs: tuple[float, ...] = ()
    text: str = field(default="", compare=False)  # equal evidence scores alike, whatever the token's spelling
    # The names of the `top_logprobs` entries, in the same order: read only when asked (`with_names`), for the
    # escalation log's teacher tokens; scores never need them.
    top_tokens: tuple[str, ...] = field(default=(), compare=False)


def _as_number(value: Any) -> float | None:
    """A logprob (or probability) as a float, or None when it is absent or not a number.

    bool is refused although it is an int subclass: `True` is no logprob.
    NaN is refused too: it would poison every mean it enters.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _rank(value: Any) -> float:
    """Sort key for top entries: malformed values rank last."""
    number = _as_number(value)
    return -math.inf if number is None else number


def _as_count(value: Any) -> int | None:
    """A non-negative int request parameter, or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return max(value, 0)


def first_choice(body: Any) -> Mapping[str, Any] | None:
    """Choice 0 of a response or chunk.

    Stream chunks of an `n > 1` request carry one choice each, not always
    index 0, so the choice is picked by its `index` when choices have one.
    """
    if not isinstance(body, Mapping):
        return None
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    dict_choices = [choice for choice in choices if isinstance(choice, Mapping)]
    if not dict_choices:
        return None
    indexed = [choice for choice in dict_choices if "index" in choice]
    if not indexed:
        return dict_choices[0]
    for choice in indexed:
        if choice.get("index") == 0:
            return choice
    return None


def _chat_evidence(logprobs: Any, with_names: bool) -> list[TokenEvidence]:
    if not isinstance(logprobs, Mapping):
        return []
    content = logprobs.get("content")
    if not isinstance(content, list):
        return []
    evidence: list[TokenEvidence] = []
    for entry in content:
        if not isinstance(entry, Mapping):
            continue
        logprob = _as_number(entry.get("logprob"))
        if logprob is None:
            continue
        top = entry.get("top_logprobs")
        alternatives: list[float] = []
        names: list[str] | None = [] if with_names else None
        if isinstance(top, list):
            for candidate in top:
                if isinstance(candidate, Mapping):
                    value = _as_number(candidate.get("logprob"))
                    if value is not None:
                        alternatives.append(value)
                        if names is not None:
                            names.append(_name(candidate.get("token")))
        token = entry.get("token")
        text = token if isinstance(token, str) else ""
        evidence.append(TokenEvidence(logprob, tuple(alternatives), text, tuple(names) if names else ()))
    return evidence


def _completion_evidence(logprobs: Any, with_names: bool) -> list[TokenEvidence]:
    if not isinstance(logprobs, Mapping):
        return []
    token_logprobs = logprobs.get("token_logprobs")
    if not isinstance(token_logprobs, list):
        return []
    tops = logprobs.get("top_logprobs")
    if not isinstance(tops, list):
        tops = []
    texts = logprobs.get("tokens")
    if not isinstance(texts, list):
        texts = []
    evidence: list[TokenEvidence] = []
    for position, raw in enumerate(token_logprobs):
        # None marks a position without a logprob, e.g. the first prompt
        # token when the caller asked for `echo`.
        logprob = _as_number(raw)
        if logprob is None:
            continue
        top = tops[position] if position < len(tops) else None
        alternatives: list[float] = []
        names: list[str] | None = [] if with_names else None
        if isinstance(top, Mapping):
            for name, value in top.items():
                number = _as_number(value)
                if number is not None:
                    alternatives.append(number)
                    if names is not None:
                        names.append(_name(name))
        text = texts[position] if position < len(texts) else ""
        text = text if isinstance(text, str) else ""
        evidence.append(TokenEvidence(logprob, tuple(alternatives), text, tuple(names) if names else ()))
    return evidence


def _name(token: Any) -> str:
    """A token's name as the engine spells it; "" for one that is not a string."""
    return token if isinstance(token, str) else ""


def choice_token_evidence(
    endpoint: Endpoint, choice: Mapping[str, Any], *, with_names: bool = False
) -> list[TokenEvidence]:
    """Per-token evidence of one choice (of a whole response or of a chunk's delta).

    Positions whose logprob is None are skipped; a missing or malformed
    logprobs block gives an empty list; classify answers carry no tokens.
    `with_names` also reads the names of the top entries (`top_tokens`).
    """
    if endpoint is Endpoint.chat:
        return _chat_evidence(choice.get("logprobs"), with_names)
    if endpoint is Endpoint.completion:
        return _completion_evidence(choice.get("logprobs"), with_names)
    return []


def token_evidence(endpoint: Endpoint, response: dict[str, Any]) -> list[TokenEvidence]:
    """Per-token evidence of choice 0 of a non-streaming chat or completion response (`choice_token_evidence`)."""
    choice = first_choice(response)
    return [] if choice is None else choice_token_evidence(endpoint, choice)


def first_token_alternatives(response: Mapping[str, Any]) -> dict[str, float]:
    """The first token of choice 0 of a chat response and its top alternatives, token text -> logprob.

    What an LLM judge's verdict is read from (`kascade.calibration.judge.verdict`);
    {} for a response without logprobs. Entries that decode to the same text (two
    token ids for one spelling) add up: log(exp(a) + exp(b)).
    """
    choice = first_choice(response)
    evidence = [] if choice is None else choice_token_evidence(Endpoint.chat, choice, with_names=True)
    if not evidence:
        return {}
    first = evidence[0]
    alternatives: dict[str, float] = {}
    for name, logprob in zip(first.top_tokens, first.top_logprobs, strict=True):
        seen = alternatives.get(name)
        alternatives[name] = logprob if seen is None else _log_add(seen, logprob)
    alternatives.setdefault(first.text, first.logprob)  # the chosen token, where the top list left it out
    return alternatives


def _log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)), without overflow."""
    high, low = max(a, b), min(a, b)
    return high if low == -math.inf else high + math.log1p(math.exp(low - high))


def chunk_token_evidence(endpoint: Endpoint, chunk: dict[str, Any]) -> list[TokenEvidence]:
    """Per-token evidence of the delta in one SSE chunk (same layouts as full responses).

    A chunk without choices (vLLM's closing usage chunk) gives an empty list.
    """
    return token_evidence(endpoint, chunk)


def class_probs(response: Mapping[str, Any]) -> list[float]:
    """The label probabilities of the first input of a vLLM classify response.

    Entries that are not numbers are dropped; a missing `data` gives [].
    """
    if not isinstance(response, Mapping):
        return []
    data = response.get("data")
    if not isinstance(data, list) or not data or not isinstance(data[0], Mapping):
        return []
    probs = data[0].get("probs")
    if not isinstance(probs, list):
        return []
    return [number for number in (_as_number(p) for p in probs) if number is not None]


def with_logprobs_requested(endpoint: Endpoint, body: dict[str, Any], top_logprobs: int) -> dict[str, Any]:
    """A copy of `body` that asks the tier for token logprobs and `top_logprobs` alternatives.

    What the caller asked for is never reduced: the larger of the two counts
    is requested, and `strip_unrequested_logprobs` later hides the surplus.
    In the completions API `logprobs` is itself the count; 0 still returns
    the sampled token's logprob in vLLM, which is all some scores need.
    Classify bodies come back as an unchanged copy.
    """
    wanted = max(top_logprobs, 0)
    request = dict(body)
    if endpoint is Endpoint.chat:
        request["logprobs"] = True
        request["top_logprobs"] = max(_as_count(body.get("top_logprobs")) or 0, wanted)
    elif endpoint is Endpoint.completion:
        request["logprobs"] = max(_as_count(body.get("logprobs")) or 0, wanted)
    return request


def caller_logprobs_request(endpoint: Endpoint, body: dict[str, Any]) -> tuple[bool, int]:
    """Whether the caller asked for logprobs, and how many top alternatives per token.

    Chat: `(bool(logprobs), top_logprobs or 0)`. Completion: asked when
    `logprobs` is an int (0 included: the sampled token's logprob alone).
    """
    if endpoint is Endpoint.chat:
        return bool(body.get("logprobs")), _as_count(body.get("top_logprobs")) or 0
    if endpoint is Endpoint.completion:
        count = _as_count(body.get("logprobs"))
        return count is not None, count or 0
    return False, 0


def _keep_highest(entries: list[Any], n: int) -> list[Any]:
    """The `n` chat top entries with the highest logprob, in their original order.

    vLLM and OpenAI already sort them, so this is `entries[:n]` in practice;
    sorting here keeps the result right for engines that do not.
    """
    if len(entries) <= n:
        return list(entries)
    ranked = sorted(
        enumerate(entries),
        key=lambda item: _rank(item[1].get("logprob") if isinstance(item[1], Mapping) else None),
        reverse=True,
    )[:n]
    return [entry for _, entry in sorted(ranked, key=lambda item: item[0])]


def _trim_chat(logprobs: Mapping[str, Any], n: int) -> dict[str, Any]:
    trimmed = dict(logprobs)
    # `refusal` has the same layout as `content` in OpenAI's chat logprobs.
    for key in ("content", "refusal"):
        entries = logprobs.get(key)
        if not isinstance(entries, list):
            continue
        new_entries: list[Any] = []
        for entry in entries:
            if isinstance(entry, Mapping) and isinstance(entry.get("top_logprobs"), list):
                entry = {**entry, "top_logprobs": _keep_highest(entry["top_logprobs"], n)}
            new_entries.append(entry)
        trimmed[key] = new_entries
    return trimmed


def _trim_completion(logprobs: Mapping[str, Any], n: int) -> dict[str, Any]:
    """Keep, at each position, the `n` most likely tokens plus the sampled one.

    vLLM's completions top dicts hold up to n+1 entries because the sampled
    token is always listed; keeping it preserves exactly what the caller
    would have received had it asked the tier directly.
    """
    trimmed = dict(logprobs)
    tops = logprobs.get("top_logprobs")
    if not isinstance(tops, list):
        return trimmed
    tokens = logprobs.get("tokens")
    tokens = tokens if isinstance(tokens, list) else []
    new_tops: list[Any] = []
    for position, top in enumerate(tops):
        if not isinstance(top, Mapping):
            new_tops.append(top)
            continue
        highest = sorted(top.items(), key=lambda item: _rank(item[1]), reverse=True)[:n]
        keep = {token for token, _ in highest}
        sampled = tokens[position] if position < len(tokens) else None
        if isinstance(sampled, str) and sampled in top:
            keep.add(sampled)
        new_tops.append({token: value for token, value in top.items() if token in keep})
    trimmed["top_logprobs"] = new_tops
    return trimmed


def strip_unrequested_logprobs(
    endpoint: Endpoint, caller_body: dict[str, Any], response: dict[str, Any]
) -> dict[str, Any]:
    """A copy of `response` (full body or stream chunk) without the logprobs the router asked for on its own.

    If the caller did not ask for logprobs, every choice's `logprobs` becomes
    None (as the tier would have answered). If it asked for fewer top
    alternatives than the router did, each position's top list is trimmed to
    the caller's count (completions: plus the sampled token, see
    `_trim_completion`). The input is never mutated.
    """
    if not isinstance(response, Mapping):
        return response
    stripped = dict(response)
    choices = response.get("choices")
    if endpoint is Endpoint.classify or not isinstance(choices, list):
        return stripped
    asked, n = caller_logprobs_request(endpoint, caller_body)
    new_choices: list[Any] = []
    for choice in choices:
        if not isinstance(choice, Mapping):
            new_choices.append(choice)
            continue
        new_choice = dict(choice)
        logprobs = choice.get("logprobs")
        if not asked:
            new_choice["logprobs"] = None
        elif isinstance(logprobs, Mapping):
            if endpoint is Endpoint.chat:
                new_choice["logprobs"] = _trim_chat(logprobs, n)
            else:
                new_choice["logprobs"] = _trim_completion(logprobs, n)
        new_choices.append(new_choice)
    stripped["choices"] = new_choices
    return stripped
