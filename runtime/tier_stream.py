"""A tier's stream inside the router: relayed to the caller, or closed when the request escalates past it.

Either way the stream is closed at the end (which cancels the tier's
generation) and its tokens are counted on the tier's call, from the usage the
stream reported or, failing that, from what was seen of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from kascade.api.accept import Accept
from kascade.runtime.attempts import Attempts, usage_of_chunks
from kascade.runtime.engines.base import Endpoint, TierError
from kascade.runtime.logprobs import TokenEvidence, chunk_token_evidence
from kascade.runtime.presentation import caller_wants_usage, present_chunk
from kascade.runtime.scoring.policy import Decision, judge_tokens
from kascade.runtime.sse import aclose_quietly

Chunks = AsyncIterator[dict[str, Any]]


@dataclass
class OpenStream:
    """A tier's stream once opened: the chunks read so far, the rest, and the tokens scored (early mode)."""

    buffered: list[dict[str, Any]]
    rest: Chunks
    evidence: list[TokenEvidence] = field(default_factory=list)


def streaming_overrides(body: dict[str, Any]) -> dict[str, Any]:
    """Ask the tier to stream and to report usage, whatever the caller asked (the ledger needs it)."""
    options = body.get("stream_options")
    return {"stream": True, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}


async def relay(
    endpoint: Endpoint,
    caller_body: dict[str, Any],
    tier: str,
    served_model: str,
    opened: OpenStream,
    attempts: Attempts,
    record: Callable[[str | None, list[dict[str, Any]]], None],
) -> Chunks:
    """Pass a tier's stream to the caller: honest model name, only the logprobs asked for.

    `record(answered_by, chunks)` writes the ledger entry when the stream ends,
    however it ends, with every chunk the tier sent (the escalation log reads them); a client that goes away closes this generator, which closes the
    upstream stream and so cancels the tier's generation.
    """
    wants_usage = caller_wants_usage(caller_body)
    seen = list(opened.buffered)
    completed = False
    try:
        for chunk in opened.buffered:
            presented = present_chunk(endpoint, caller_body, served_model, chunk, wants_usage)
            if presented is not None:
                yield presented
        async for chunk in opened.rest:
            seen.append(chunk)
            presented = present_chunk(endpoint, caller_body, served_model, chunk, wants_usage)
            if presented is not None:
                yield presented
        completed = True
    except TierError as error:
        yield {
            "error": {
                "message": f"tier {tier!r} failed mid-stream: {error.message}",
                "type": "upstream_error",
                "param": None,
                "code": 502,
            }
        }
    finally:
        await aclose_quietly(opened.rest)
        _count_tokens(attempts, seen, opened.evidence, ok=completed)
        record(tier if completed else None, seen)


async def score_prefix(
    accept: Accept,
    endpoint: Endpoint,
    chunks: Chunks,
    first: dict[str, Any],
    early_tokens: int,
    tier_body: dict[str, Any],
) -> tuple[Decision, OpenStream]:
    """Read a stream until its first `early_tokens` tokens are in (or it ends), then score them (early mode).

    A stream that fails on the way is closed, and its `TierError` raised.
    """
    buffered = [first]
    evidence: list[TokenEvidence] = list(chunk_token_evidence(endpoint, first))
    rest = chunks
    try:
        while len(evidence) < early_tokens:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                rest = empty_stream()
                break
            buffered.append(chunk)
            evidence.extend(chunk_token_evidence(endpoint, chunk))
    except TierError:
        await aclose_quietly(chunks)
        raise
    decision = judge_tokens(accept, evidence, tier_body)
    return decision, OpenStream(buffered=buffered, rest=rest, evidence=evidence)


async def discard(opened: OpenStream, attempts: Attempts) -> None:
    """Escalating past a streamed answer: close it (which cancels its generation) and count its tokens."""
    await aclose_quietly(opened.rest)
    _count_tokens(attempts, opened.buffered, opened.evidence)


def _count_tokens(
    attempts: Attempts, seen: list[dict[str, Any]], evidence: list[TokenEvidence], *, ok: bool | None = None
) -> None:
    input_tokens, output_tokens = usage_of_chunks(seen)
    attempts.settle_last(input_tokens=input_tokens, output_tokens=max(output_tokens, len(evidence)), ok=ok)


async def empty_stream() -> Chunks:
    return
    yield  # pragma: no cover
