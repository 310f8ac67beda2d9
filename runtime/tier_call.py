"""One call to a tier within the router's retry budget: a whole answer, or a stream opened to its first chunk.

A failed attempt (timeout, refused connection, 5xx, 429) is retried after
`tier_step.retry_delay` while the budget lasts; a refused connection to a tier
that scales to zero is skipped or waited for instead (`replica_absence`). Every attempt is accounted in
the request's `Attempts`, the failed ones included, with its latency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from kascade.runtime.attempts import Attempts, usage_of
from kascade.runtime.engines.base import Endpoint, Engine, TierError
from kascade.runtime.ledger import TierCall
from kascade.runtime.replica_absence import ALWAYS_SERVED, NoReplica, ReplicaAbsence
from kascade.runtime.sse import aclose_quietly
from kascade.runtime.tier_step import as_tier_error, retry_delay
from kascade.runtime.tier_stream import Chunks, OpenStream, discard

if TYPE_CHECKING:
    from kascade.runtime.admission import Slot
    from kascade.runtime.config import TierConfig
    from kascade.runtime.scoring.policy import Decision

_Result = TypeVar("_Result")


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """How long one attempt may take, how many retries follow a failure, and the backoff between them."""

    timeout_seconds: float
    retries: int
    backoff_seconds: float
    latency_clock: Callable[[], float] = time.perf_counter  # monotonic seconds: an attempt's latency


@dataclass(slots=True)
class Called:
    """What calling one tier gave: the error it gave up with, or its answer (whole or streamed) and its score."""

    error: TierError | None = None
    decision: Decision | None = None  # None for the last tier, which is not scored
    response: dict[str, Any] | None = None
    stream: OpenStream | None = None
    slot: Slot | None = None  # the tier's admission slot, held by a stream until it is closed

    @property
    def confidence(self) -> float | None:
        return None if self.decision is None else self.decision.confidence

    async def set_aside(self, attempts: Attempts) -> None:
        """An answer that will not be returned: its stream closed (its tokens counted), its slot given back."""
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await discard(stream, attempts)
        if self.slot is not None:
            self.slot.release()


async def call_whole(
    budget: RetryBudget, tier: TierConfig, engine: Engine, endpoint: Endpoint, body: dict[str, Any], attempts: Attempts
) -> dict[str, Any]:
    """The tier's whole answer; its tokens are accounted with the call."""

    async def call_once() -> dict[str, Any]:
        async with asyncio.timeout(budget.timeout_seconds):
            return await engine.call(endpoint, body)

    response, latency = await _retrying(budget, tier.name, attempts, call_once, ReplicaAbsence.of(tier))
    input_tokens, output_tokens = usage_of(response)
    attempts.add(TierCall(tier.name, input_tokens, output_tokens, latency, ok=True))
    return response


async def open_stream(
    budget: RetryBudget, tier: TierConfig, engine: Engine, endpoint: Endpoint, body: dict[str, Any], attempts: Attempts
) -> tuple[Chunks, dict[str, Any]]:
    """Open a tier's stream and read its first chunk.

    Waiting for the first chunk means a tier that refuses or fails at once
    is handled before the caller has been sent anything. The call's tokens
    are filled in when the stream ends.
    """

    async def open_once() -> tuple[Chunks, dict[str, Any]]:
        chunks = aiter(engine.stream(endpoint, body))
        try:
            async with asyncio.timeout(budget.timeout_seconds):
                first = await anext(chunks)
        except StopAsyncIteration:
            first = {}
        except BaseException:
            await aclose_quietly(chunks)
            raise
        return chunks, first

    opened, latency = await _retrying(budget, tier.name, attempts, open_once, ReplicaAbsence.of(tier))
    attempts.add(TierCall(tier.name, 0, 0, latency, ok=True))
    return opened


async def _retrying(
    budget: RetryBudget,
    tier: str,
    attempts: Attempts,
    once: Callable[[], Awaitable[_Result]],
    absence: ReplicaAbsence = ALWAYS_SERVED,
) -> tuple[_Result, float]:
    """Run `once` until it succeeds or the budget is spent; failed attempts are accounted here.

    A tier that scales to zero and refuses the connection (`absence`): skipped at once (`NoReplica`), or asked
    again until a replica answers within its cold-start wait, which is noted on `attempts`.
    """
    clock = budget.latency_clock
    attempt = 0
    refused_at: float | None = None
    try:
        while True:
            started = clock()
            try:
                return await once(), clock() - started
            except (TierError, TimeoutError) as caught:
                error = as_tier_error(caught, budget.timeout_seconds)
                if absence.skips(error):
                    attempts.skip_without_replica(tier)
                    raise NoReplica(tier, error) from caught
                refused_at = started if refused_at is None and error.no_connection else refused_at
                pause = absence.pause(error, 0.0 if refused_at is None else clock() - refused_at)
                if pause is not None:
                    await asyncio.sleep(pause)
                    continue
                _account_failure(budget, tier, attempts, started)
                delay = retry_delay(error, attempt, retries=budget.retries, backoff_seconds=budget.backoff_seconds)
                if delay is None:
                    raise error from caught
                await asyncio.sleep(delay)
                attempt += 1
    finally:
        if refused_at is not None and absence.wait_seconds > 0:
            attempts.cold_start_waits.append((tier, clock() - refused_at))


def _account_failure(budget: RetryBudget, tier: str, attempts: Attempts, started: float) -> None:
    attempts.add(TierCall(tier, 0, 0, budget.latency_clock() - started, ok=False))
