"""Running one request through the tiers: call, score, accept or escalate, account.

This is the I/O half of the router. The decisions themselves are pure
(`policy.judge`, `confidence.*`); the HTTP surface lives in `router.py`.

Rules, in order of the tiers (cheapest first):
- a tier other than the last is asked for token logprobs and its answer is
  scored; at or above its threshold the answer is returned, below it the
  request escalates;
- a failed call (timeout, refused connection, 5xx, 429) is retried within the
  router's budget, then the request escalates (`onTierError: escalate`) or
  fails (`fail`); a 4xx from a tier other than the last escalates too, since a
  larger tier often has the larger context the request needed;
- the last tier always answers; when it fails the caller gets its 4xx as is,
  or 502 (bad answer), 503 (unreachable) or 504 (timeout);
- every call is counted in the ledger, the wasted ones included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from kascade.api.modelcascade import OnTierError, StreamingMode
from kascade.runtime.config import RouterConfig, TierConfig
from kascade.runtime.confidence import required_top_logprobs
from kascade.runtime.engines.base import Endpoint, Engine, TierError, TierErrorKind
from kascade.runtime.ledger import Ledger, RequestOutcome, TierCall
from kascade.runtime.logprobs import (
    TokenEvidence,
    chunk_token_evidence,
    strip_unrequested_logprobs,
    with_logprobs_requested,
)
from kascade.runtime.metrics import RouterMetrics
from kascade.runtime.policy import judge, judge_tokens

_Result = TypeVar("_Result")

_FAILURE_STATUS = {
    TierErrorKind.timeout: (504, "the answering tier timed out"),
    TierErrorKind.unavailable: (503, "the answering tier is unavailable"),
    TierErrorKind.server: (502, "the answering tier failed"),
}


@dataclass(frozen=True)
class Tier:
    config: TierConfig
    engine: Engine
    is_last: bool

    @property
    def name(self) -> str:
        return self.config.name


class CascadeFailed(Exception):
    """No tier could answer. `status` and `body` are what the caller gets."""

    def __init__(self, status: int, message: str, *, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body


@dataclass(frozen=True)
class Answer:
    """Who answered and how sure it was; `confidence` is None for the last tier, which is not scored."""

    tier: str
    served_model: str
    confidence: float | None
    escalated: bool
    trail: str  # every tier tried, with its score: "small=0.4123,large"


@dataclass(frozen=True)
class CompleteAnswer(Answer):
    response: dict[str, Any]


@dataclass(frozen=True)
class StreamingAnswer(Answer):
    chunks: AsyncIterator[dict[str, Any]]


class _Attempts:
    """The calls one request made, in order; becomes the ledger's RequestOutcome."""

    def __init__(self) -> None:
        self.calls: list[TierCall] = []

    def add(self, call: TierCall) -> None:
        self.calls.append(call)

    def set_last_confidence(self, confidence: float) -> None:
        self.calls[-1] = replace(self.calls[-1], confidence=confidence)

    def trail(self) -> str:
        """Each tier tried, in order: its score, `error` if every attempt failed, or just its name."""
        steps: dict[str, str] = {}
        for call in self.calls:
            if call.confidence is not None:
                steps[call.tier] = f"{call.tier}={call.confidence:.4f}"
            elif call.ok:
                steps[call.tier] = call.tier
            else:
                steps.setdefault(call.tier, f"{call.tier}=error")
        return ",".join(steps.values())


class Cascade:
    def __init__(
        self,
        config: RouterConfig,
        engines: Mapping[str, Engine],
        ledger: Ledger,
        metrics: RouterMetrics | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        missing = [tier.name for tier in config.tiers if tier.name not in engines]
        if missing:
            raise ValueError(f"no engine for tier(s): {', '.join(missing)}")
        self.config = config
        self.tiers = [
            Tier(config=tier, engine=engines[tier.name], is_last=index == len(config.tiers) - 1)
            for index, tier in enumerate(config.tiers)
        ]
        self.ledger = ledger
        self.metrics = metrics
        self._clock = clock

    @property
    def last_tier(self) -> Tier:
        return self.tiers[-1]

    # -- non-streaming ---------------------------------------------------------------------

    async def answer(self, endpoint: Endpoint, body: dict[str, Any]) -> CompleteAnswer:
        attempts = _Attempts()
        answered = False
        try:
            for index, tier in enumerate(self.tiers):
                try:
                    response = await self._call(tier, endpoint, self._tier_body(tier, endpoint, body), attempts)
                except TierError as error:
                    self._escalate_or_fail(tier, error)
                    continue
                confidence = None
                if not tier.is_last:
                    assert tier.config.accept is not None
                    decision = judge(tier.config.accept, endpoint, response)
                    confidence = decision.confidence
                    attempts.set_last_confidence(confidence)
                    if not decision.accept:
                        continue
                answered = True
                self._record(attempts, tier.name, escalated=index > 0)
                return CompleteAnswer(
                    tier=tier.name,
                    served_model=tier.config.served_model,
                    confidence=confidence,
                    escalated=index > 0,
                    trail=attempts.trail(),
                    response=self._present(endpoint, body, tier, response),
                )
            raise AssertionError("the last tier always answers or raises")  # pragma: no cover
        finally:
            if not answered:  # failed, or cancelled because the client went away
                self._record(attempts, None, escalated=len(attempts.calls) > 1)

    # -- streaming -------------------------------------------------------------------------

    async def answer_streaming(self, endpoint: Endpoint, body: dict[str, Any]) -> StreamingAnswer:
        """Choose the answering tier, then hand back its chunks.

        The tier is known before the first byte goes out, so the x-kascade-*
        headers are honest, and a failure of every tier is still a proper HTTP
        error rather than a broken stream.
        """
        attempts = _Attempts()
        handed_over = False
        try:
            for index, tier in enumerate(self.tiers):
                escalated = index > 0
                if tier.is_last:
                    upstream_body = _streaming_body(body, tier.config.served_model)
                    try:
                        chunks, first = await self._open_stream(tier, endpoint, upstream_body, attempts)
                    except TierError as error:
                        self._escalate_or_fail(tier, error)
                        raise AssertionError("unreachable: the last tier's failure raises")  # pragma: no cover
                    handed_over = True
                    return StreamingAnswer(
                        tier=tier.name,
                        served_model=tier.config.served_model,
                        confidence=None,
                        escalated=escalated,
                        trail=attempts.trail(),
                        chunks=self._relay(endpoint, body, tier, attempts, [first], chunks, [], escalated),
                    )
                assert tier.config.accept is not None
                if self.config.streaming.mode is StreamingMode.early:
                    decided = await self._try_early(tier, endpoint, body, attempts, escalated)
                    if decided is None:
                        continue
                    handed_over = True
                    return decided
                tier_body = self._tier_body(tier, endpoint, {**body, "stream": False})
                tier_body.pop("stream_options", None)
                try:
                    response = await self._call(tier, endpoint, tier_body, attempts)
                except TierError as error:
                    self._escalate_or_fail(tier, error)
                    continue
                decision = judge(tier.config.accept, endpoint, response)
                attempts.set_last_confidence(decision.confidence)
                if not decision.accept:
                    continue
                handed_over = True
                self._record(attempts, tier.name, escalated=escalated)
                return StreamingAnswer(
                    tier=tier.name,
                    served_model=tier.config.served_model,
                    confidence=decision.confidence,
                    escalated=escalated,
                    trail=attempts.trail(),
                    chunks=_replay_as_chunks(endpoint, body, self._present(endpoint, body, tier, response)),
                )
            raise AssertionError("the last tier always answers or raises")  # pragma: no cover
        finally:
            if not handed_over:
                self._record(attempts, None, escalated=len(attempts.calls) > 1)

    async def _try_early(
        self, tier: Tier, endpoint: Endpoint, body: dict[str, Any], attempts: _Attempts, escalated: bool
    ) -> StreamingAnswer | None:
        """Early mode: score the first N streamed tokens; stream on if they are good, else escalate."""
        assert tier.config.accept is not None
        upstream_body = self._tier_body(tier, endpoint, _streaming_body(body, tier.config.served_model))
        try:
            chunks, first = await self._open_stream(tier, endpoint, upstream_body, attempts)
        except TierError as error:
            self._escalate_or_fail(tier, error)
            return None
        buffered = [first]
        evidence: list[TokenEvidence] = list(chunk_token_evidence(endpoint, first))
        wanted = self.config.streaming.early_tokens
        ended = False
        try:
            while len(evidence) < wanted:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    ended = True
                    break
                buffered.append(chunk)
                evidence.extend(chunk_token_evidence(endpoint, chunk))
        except TierError as error:
            await _aclose_quietly(chunks)
            attempts.calls[-1] = replace(attempts.calls[-1], ok=False)
            self._escalate_or_fail(tier, error)
            return None
        decision = judge_tokens(tier.config.accept, evidence)
        attempts.set_last_confidence(decision.confidence)
        if not decision.accept:
            await chunks.aclose()  # cancels the small tier's generation
            usage = _usage_of_chunks(buffered)
            attempts.calls[-1] = replace(
                attempts.calls[-1], input_tokens=usage[0], output_tokens=max(usage[1], len(evidence))
            )
            return None
        rest = _empty_stream() if ended else chunks
        return StreamingAnswer(
            tier=tier.name,
            served_model=tier.config.served_model,
            confidence=decision.confidence,
            escalated=escalated,
            trail=attempts.trail(),
            chunks=self._relay(endpoint, body, tier, attempts, buffered, rest, evidence, escalated),
        )

    async def _relay(
        self,
        endpoint: Endpoint,
        caller_body: dict[str, Any],
        tier: Tier,
        attempts: _Attempts,
        buffered: list[dict[str, Any]],
        upstream: AsyncIterator[dict[str, Any]],
        evidence: list[TokenEvidence],
        escalated: bool,
    ) -> AsyncIterator[dict[str, Any]]:
        """Pass a tier's stream to the caller: honest model name, only the logprobs asked for.

        The ledger entry is written when the stream ends, however it ends; a
        client that goes away closes this generator, which closes the upstream
        stream and so cancels the tier's generation.
        """
        wants_usage = _caller_wants_usage(caller_body)
        seen = list(buffered)
        completed = False
        try:
            for chunk in buffered:
                presented = self._present_chunk(endpoint, caller_body, tier, chunk, wants_usage)
                if presented is not None:
                    yield presented
            async for chunk in upstream:
                seen.append(chunk)
                presented = self._present_chunk(endpoint, caller_body, tier, chunk, wants_usage)
                if presented is not None:
                    yield presented
            completed = True
        except TierError as error:
            yield {"error": {"message": f"tier {tier.name!r} failed mid-stream: {error.message}",
                             "type": "upstream_error", "param": None, "code": 502}}
        finally:
            await _aclose_quietly(upstream)
            input_tokens, output_tokens = _usage_of_chunks(seen)
            attempts.calls[-1] = replace(
                attempts.calls[-1],
                input_tokens=input_tokens,
                output_tokens=max(output_tokens, len(evidence)),
                ok=completed,
            )
            self._record(attempts, tier.name if completed else None, escalated=escalated)

    # -- shared steps ----------------------------------------------------------------------

    def _tier_body(self, tier: Tier, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        tier_body = {**body, "model": tier.config.served_model}
        if tier.is_last:
            return tier_body
        assert tier.config.accept is not None
        return with_logprobs_requested(endpoint, tier_body, required_top_logprobs(tier.config.accept.method))

    async def _call(self, tier: Tier, endpoint: Endpoint, body: dict[str, Any], attempts: _Attempts) -> dict[str, Any]:
        """One tier call within the retry budget; every attempt is accounted."""
        async def call_once() -> dict[str, Any]:
            async with asyncio.timeout(self.config.timeout_seconds):
                return await tier.engine.call(endpoint, body)

        response, latency = await self._retrying(tier, attempts, call_once)
        input_tokens, output_tokens = _usage(response)
        attempts.add(TierCall(tier.name, input_tokens, output_tokens, latency, ok=True))
        return response

    async def _open_stream(
        self, tier: Tier, endpoint: Endpoint, body: dict[str, Any], attempts: _Attempts
    ) -> tuple[AsyncIterator[dict[str, Any]], dict[str, Any]]:
        """Open a tier's stream and read its first chunk, within the retry budget.

        Waiting for the first chunk means a tier that refuses or fails at once
        is handled before the caller has been sent anything. The call's tokens
        are filled in when the stream ends.
        """

        async def open_once() -> tuple[AsyncIterator[dict[str, Any]], dict[str, Any]]:
            chunks = aiter(tier.engine.stream(endpoint, body))
            try:
                async with asyncio.timeout(self.config.timeout_seconds):
                    first = await anext(chunks)
            except StopAsyncIteration:
                first = {}
            except BaseException:
                await _aclose_quietly(chunks)
                raise
            return chunks, first

        opened, latency = await self._retrying(tier, attempts, open_once)
        attempts.add(TierCall(tier.name, 0, 0, latency, ok=True))
        return opened

    async def _retrying(
        self, tier: Tier, attempts: _Attempts, once: Callable[[], Awaitable[_Result]]
    ) -> tuple[_Result, float]:
        """Run `once` until it succeeds or the budget is spent; failed attempts are accounted here."""
        for attempt in range(self.config.retries + 1):
            started = self._clock()
            try:
                return await once(), self._clock() - started
            except (TierError, TimeoutError) as caught:
                error = _as_tier_error(caught, self.config.timeout_seconds)
                attempts.add(TierCall(tier.name, 0, 0, self._clock() - started, ok=False))
                if not error.retryable or attempt == self.config.retries:
                    raise error from caught
                await asyncio.sleep(self.config.retry_backoff_seconds * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _escalate_or_fail(self, tier: Tier, error: TierError) -> None:
        """After a tier gave up: return to escalate, or raise CascadeFailed."""
        if not tier.is_last and self.config.on_tier_error is OnTierError.escalate:
            return
        if error.kind is TierErrorKind.client and error.status is not None:
            raise CascadeFailed(error.status, f"tier {tier.name!r} refused the request: {error.message}", body=error.body)
        status, what = _FAILURE_STATUS[error.kind]
        raise CascadeFailed(status, f"{what} (tier {tier.name!r}): {error.message}")

    def _present(self, endpoint: Endpoint, caller_body: dict[str, Any], tier: Tier, response: dict[str, Any]) -> dict[str, Any]:
        presented = strip_unrequested_logprobs(endpoint, caller_body, response)
        presented["model"] = tier.config.served_model
        return presented

    def _present_chunk(
        self, endpoint: Endpoint, caller_body: dict[str, Any], tier: Tier, chunk: dict[str, Any], wants_usage: bool
    ) -> dict[str, Any] | None:
        if not chunk:
            return None
        presented = self._present(endpoint, caller_body, tier, chunk)
        if not wants_usage:
            if not presented.get("choices"):
                return None  # the usage-only chunk the router asked for on its own
            presented.pop("usage", None)
        return presented

    def _record(self, attempts: _Attempts, answered_by: str | None, *, escalated: bool) -> None:
        outcome = RequestOutcome(answered_by=answered_by, calls=tuple(attempts.calls), escalated=escalated)
        cost = self.ledger.record(outcome)
        if self.metrics is not None:
            self.metrics.observe(outcome, cost)


def _as_tier_error(caught: BaseException, timeout: float) -> TierError:
    if isinstance(caught, TierError):
        return caught
    return TierError(TierErrorKind.timeout, f"no answer within {timeout:g} s")


def _usage(response: dict[str, Any]) -> tuple[int, int]:
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) and prompt >= 0 else 0,
        completion if isinstance(completion, int) and completion >= 0 else 0,
    )


def _usage_of_chunks(chunks: list[dict[str, Any]]) -> tuple[int, int]:
    """The usage a stream reported (the last chunk that carries one), else a count of content chunks."""
    for chunk in reversed(chunks):
        if isinstance(chunk.get("usage"), dict):
            return _usage(chunk)
    return 0, sum(1 for chunk in chunks if chunk.get("choices"))


def _caller_wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _streaming_body(body: dict[str, Any], served_model: str) -> dict[str, Any]:
    """Ask the tier to stream and to report usage, whatever the caller asked (the ledger needs it)."""
    options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    return {**body, "model": served_model, "stream": True, "stream_options": {**options, "include_usage": True}}


async def _replay_as_chunks(
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
            yield {**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]}
            delta = {key: value for key, value in message.items() if key != "role" and value is not None}
            yield {**base, "choices": [{"index": index, "delta": delta, "logprobs": choice.get("logprobs"),
                                        "finish_reason": None}]}
            yield {**base, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                        "finish_reason": choice.get("finish_reason")}]}
        else:
            yield {**base, "choices": [{"index": index, "text": choice.get("text", ""),
                                        "logprobs": choice.get("logprobs"), "finish_reason": None}]}
            yield {**base, "choices": [{"index": index, "text": "", "logprobs": None,
                                        "finish_reason": choice.get("finish_reason")}]}
    if _caller_wants_usage(caller_body) and isinstance(response.get("usage"), dict):
        yield {**base, "choices": [], "usage": response["usage"]}


async def _empty_stream() -> AsyncIterator[dict[str, Any]]:
    return
    yield  # pragma: no cover


async def _aclose_quietly(chunks: AsyncIterator[dict[str, Any]]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:  # closing is cleanup; the caller already has what matters
        pass

