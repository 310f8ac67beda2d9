"""Admission control in the router: a bound on the calls in flight to each tier, a bounded queue, a deadline.

`TierGate` is one tier's gate, on asyncio primitives and nothing else: at
most `max_in_flight` slots are held at once; beyond, up to `max_queue`
requests wait their turn in order, each for at most the queue's deadline;
beyond that, or past it, a request is refused. A slot is held while its
tier's call runs (a streamed answer holds it until its stream ends) and is
handed straight to the next in the queue when released.

`Admission` holds one gate per tier of a cascade (the `Cascade` owns one;
nothing here is global) and applies the spec's policy (`OnEscalationFull`):

- the first tier a request asks (the last tier too, for a request pre-routed
  straight to it): queue within the deadline, else 429;
- a tier reached by escalation: `wait` queues within the deadline, else 503;
  `keepSmall` keeps the declined answer in hand when no slot is free at once;
  `reject` answers 503 at once.

Every refusal carries a `Retry-After`: the seconds until the requests ahead
have drained at the rate the tier's slots were released lately, at least 1.
Each outcome is counted per tier in the ledger and the metrics.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from kascade.api.admission import AdmissionOutcome, OnEscalationFull
from kascade.runtime.answers import CascadeFailed
from kascade.runtime.errors import openai_error

if TYPE_CHECKING:
    from kascade.runtime.config import TierConfig
    from kascade.runtime.ledger import Ledger
    from kascade.runtime.metrics import RouterMetrics

MAX_RETRY_AFTER_SECONDS = 3600
_DRAIN_WINDOW = 32  # the releases the drain rate is measured over


class QueueFull(Exception):
    """No slot and no room in the queue: refused at once."""


class Slot:
    """A held place among a tier's calls in flight; `release` gives it back (once, however often it is called)."""

    __slots__ = ("_gate", "_released")

    def __init__(self, gate: TierGate) -> None:
        self._gate = gate
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate.leave()


class TierGate:
    """At most `max_in_flight` slots held; up to `max_queue` waiters, first come first served."""

    def __init__(self, max_in_flight: int, max_queue: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_in_flight < 1 or max_queue < 0:
            raise ValueError(f"a tier gate needs max_in_flight >= 1 and max_queue >= 0: {max_in_flight}, {max_queue}")
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._released_at: deque[float] = deque(maxlen=_DRAIN_WINDOW)
        self._clock = clock

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def try_enter(self) -> Slot | None:
        """A slot now, if one is free and no one waits for it; else None."""
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return Slot(self)
        return None

    async def enter(self, timeout_seconds: float) -> Slot:
        """A slot, waiting in the queue for at most `timeout_seconds`.

        Raises `QueueFull` at once when the queue has no room, `TimeoutError` when the deadline passes first.
        """
        slot = self.try_enter()
        if slot is not None:
            return slot
        if len(self._waiters) >= self.max_queue:
            raise QueueFull
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_seconds):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # the slot came as the wait ended: hand it on
            else:
                waiter.cancel()
                if waiter in self._waiters:  # a slot freed as the wait ended may have passed over it already
                    self._waiters.remove(waiter)
            raise
        return Slot(self)

    def leave(self) -> None:
        """A slot given back: to the first waiter, else free."""
        self._released_at.append(self._clock())
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: in_flight stays as it is
                return
        self.in_flight -= 1

    def retry_after_seconds(self, unmeasured: float) -> int:
        """When a refused request may come back: (queued + 1) slots released at the recent release rate.

        rate = (releases in the window - 1) / (now - the window's first release): the time since the last
        release counts, so a tier that stopped answering looks slower the longer it stays stopped. Before two
        releases there is no rate: `unmeasured` (the queue's deadline, within which a queue turns over). At least
        1 second.
        """
        released = self._released_at
        span = self._clock() - released[0] if released else 0.0
        if len(released) >= 2 and span > 0:
            estimate = (self.queued + 1) * span / (len(released) - 1)
        else:
            estimate = unmeasured
        return max(1, min(math.ceil(estimate), MAX_RETRY_AFTER_SECONDS))


class Refused(CascadeFailed):
    """A request a tier could not admit: 429 or 503, an OpenAI-style body and a `Retry-After`."""

    def __init__(self, status: int, message: str, retry_after: int) -> None:
        body = openai_error(message, type="RateLimitError" if status == 429 else "ServiceUnavailableError", code=status)
        super().__init__(status, message, body=body, headers={"Retry-After": str(retry_after)})


class Admission:
    """The gates of one cascade's tiers, the policy at escalation, and the counts of what each request got."""

    def __init__(
        self,
        tiers: Sequence[TierConfig],
        *,
        queue_timeout_seconds: float,
        on_escalation_full: OnEscalationFull,
        ledger: Ledger,
        metrics: RouterMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gates = {tier.name: TierGate(tier.max_in_flight, tier.max_queue, clock=clock) for tier in tiers}
        self.queue_timeout_seconds = queue_timeout_seconds
        self.on_escalation_full = on_escalation_full
        self._ledger = ledger
        self._metrics = metrics
        if metrics is not None:
            for name, gate in self.gates.items():
                _export_load(metrics, name, gate)

    @property
    def keeps_small(self) -> bool:
        """Whether an escalation keeps the declined answer when the next tier is full (`keepSmall`)."""
        return self.on_escalation_full is OnEscalationFull.keep_small

    async def admit(self, tier: str, *, escalated_from: str | None, keepable: bool = False) -> Slot | None:
        """A slot at `tier`, or None when the declined answer in hand is to be kept (keepSmall).

        `escalated_from`: the tier the request escalated from (its answer declined, or its call failed), None for
        the first tier the request asks; `keepable`: an answer is in hand (a failed call leaves none). Raises
        `Refused` (429 at the first tier, 503 on escalation) with the body and the Retry-After the caller gets.
        """
        gate = self.gates[tier]
        waits = escalated_from is None or self.on_escalation_full is OnEscalationFull.wait
        try:
            slot = await gate.enter(self.queue_timeout_seconds) if waits else gate.try_enter()
        except (QueueFull, TimeoutError) as full:
            slot = None
            waited = isinstance(full, TimeoutError)
        else:
            waited = False
        if slot is not None:
            self._count(tier, AdmissionOutcome.admitted)
            return slot
        if escalated_from is not None and keepable and self.keeps_small:
            self._count(tier, AdmissionOutcome.kept_under_load)
            return None
        raise self._refusal(tier, gate, escalated_from, waited=waited)

    def _refusal(self, tier: str, gate: TierGate, escalated_from: str | None, *, waited: bool) -> Refused:
        retry_after = gate.retry_after_seconds(self.queue_timeout_seconds)
        load = (
            f"{gate.in_flight} calls in flight of maxInFlight {gate.max_in_flight}, "
            f"{gate.queued} queued of maxQueue {gate.max_queue}"
        )
        why = f"waited {self.queue_timeout_seconds:g} s for a slot" if waited else "no slot was free"
        if escalated_from is None:
            self._count(tier, AdmissionOutcome.rejected)
            message = f"tier {tier!r} is at capacity ({load}): {why}. Retry after {retry_after} s."
            return Refused(429, message, retry_after)
        self._count(tier, AdmissionOutcome.rejected_at_escalation)
        message = (
            f"the answer of tier {escalated_from!r} was not confident enough and tier {tier!r} is at capacity "
            f"({load}): {why}. Retry after {retry_after} s; spec.router.admission.onEscalationFull: keepSmall "
            "answers with the smaller tier instead under load."
        )
        return Refused(503, message, retry_after)

    def _count(self, tier: str, outcome: AdmissionOutcome) -> None:
        self._ledger.note_admission(tier, outcome)
        if self._metrics is not None:
            self._metrics.observe_admission(tier, outcome)


def _export_load(metrics: RouterMetrics, tier: str, gate: TierGate) -> None:
    """The gate's calls in flight and queued, read by `/metrics` when it is scraped (nothing on the hot path)."""
    metrics.watch_tier_load(tier, in_flight=lambda: gate.in_flight, queued=lambda: gate.queued)
