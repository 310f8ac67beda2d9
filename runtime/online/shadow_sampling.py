"""Online calibration's measurements: (score, agreed?) pairs from a drawn share of requests, off the response path.

A request is drawn (`drawn`) with probability `rate` (`kascade.calibration.online`
says why a draw independent of the score is what the threshold selection
needs). A drawn request that reached the last tier already has both answers:
each declined tier's answer is judged against the last tier's at once
(`note_pairs`). A drawn
request that a tier before the last accepted is also sent to the last tier, as
a background task: at most `concurrency` in flight (beyond, the sample is
skipped and counted), never awaited by the request, its answer never shown to
the caller. Its cost is recorded in the ledger (`record_shadow`: in the last
tier's calls and in `actual`, and apart as `shadowCost`); with an escalation
log on, it is also kept there as a `shadow` record with its `agreed` label.

The sampler calls the last tier's engine itself and hands shadow records to
the log's keeper: it calls back into nothing that holds it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kascade.calibration.agreement import answers_agree
from kascade.calibration.online import bin_key
from kascade.runtime.attempts import usage_of
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.escalation.records import DeclinedSeen, answer_of, model_identity
from kascade.runtime.ledger import Ledger, TierCall

if TYPE_CHECKING:
    from kascade.runtime.config import ShadowSamplingConfig, TierConfig
    from kascade.runtime.engines.base import Engine
    from kascade.runtime.escalation.keeping import EscalationKeeper

log = logging.getLogger("kascade.router.shadow")


class ShadowSampler:
    """`last_tier` and its `engine` answer the shadow calls within `timeout_seconds`; `keeper` (with a log) keeps them."""

    def __init__(
        self,
        config: ShadowSamplingConfig,
        ledger: Ledger,
        *,
        last_tier: TierConfig,
        engine: Engine,
        timeout_seconds: float,
        keeper: EscalationKeeper | None = None,
        draw: Callable[[], float] = random.random,
        latency_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self._kind = config.matcher
        self._ledger = ledger
        self._last_tier = last_tier
        self._last_identity = model_identity(last_tier)
        self._engine = engine
        self._timeout_seconds = timeout_seconds
        self._keeper = keeper
        self._draw = draw
        self._latency_clock = latency_clock
        self._in_flight: set[asyncio.Task[None]] = set()
        self.skipped = 0  # drawn, but `concurrency` shadow calls were already in flight
        self.failed = 0  # shadow calls the last tier did not answer

    def drawn(self) -> bool:
        return self._draw() < self.config.rate

    def agrees(self, answer: str, last_answer: str) -> bool:
        return answers_agree(self._kind, answer, last_answer)

    def note_pairs(self, asked: Sequence[DeclinedSeen], last_answer: str) -> dict[str, bool]:
        """Count each tier's answer against the last tier's, in the tier's score bin; whether each agreed."""
        agreed = {}
        for answer in asked:
            agreed[answer.model.tier] = self.agrees(answer.text, last_answer)
            self._ledger.note_agreement(bin_key(answer.model.tier, answer.score), agreed=agreed[answer.model.tier])
        return agreed

    def accepted(
        self, endpoint: Endpoint, body: Mapping[str, Any], asked: Sequence[DeclinedSeen], answered: tuple[int, int]
    ) -> None:
        """A drawn request a tier before the last answered (`asked`: each tier's answer, the accepted one last):
        ask the last tier too, in the background. `answered`: the caller's answer's (input, output) tokens."""
        if len(self._in_flight) >= self.config.concurrency:
            self.skipped += 1
            return
        task = asyncio.get_running_loop().create_task(self._shadow(endpoint, dict(body), asked, answered))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _shadow(
        self, endpoint: Endpoint, body: dict[str, Any], asked: Sequence[DeclinedSeen], answered: tuple[int, int]
    ) -> None:
        started = self._latency_clock()
        try:
            response = await self._ask_last_tier(endpoint, body)
        except Exception as error:  # noqa: BLE001 - a shadow call that fails loses a sample, nothing else
            self.failed += 1
            log.debug("a shadow call to the last tier failed: %s", error)
            return
        tokens = usage_of(response)
        call = TierCall(self._last_tier.name, *tokens, self._latency_clock() - started, ok=True)
        self._ledger.record_shadow(call, answered)
        last = answer_of(endpoint, response)
        agreed = self.note_pairs(asked, last.text)
        if self._keeper is not None:  # teacher data too, labelled
            self._keeper.keep(endpoint, body, asked, self._last_identity, last, tokens, agreed=all(agreed.values()))

    async def _ask_last_tier(self, endpoint: Endpoint, body: Mapping[str, Any]) -> dict[str, Any]:
        """The last tier's whole answer to the caller's `body`, within the timeout, no retries.

        The body is the one the cascade would send the last tier (its served
        model; with a log, the teacher tokens asked too), never streamed.
        """
        whole = {key: value for key, value in body.items() if key not in ("stream", "stream_options")}
        whole["model"] = self._last_tier.served_model
        if self._keeper is not None:
            whole = self._keeper.teacher_body(self._last_tier, endpoint, whole)
        async with asyncio.timeout(self._timeout_seconds):
            return await self._engine.call(endpoint, whole)

    async def close(self) -> None:
        """Stop: shadow calls still in flight are cancelled (a sample lost; the caller was answered long ago)."""
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
