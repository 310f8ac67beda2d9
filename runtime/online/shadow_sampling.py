"""Online calibration's measurements: (score, agreed?) pairs from a drawn share of requests, off the response path.

A request is drawn (`drawn`) with probability `rate` (`evaluation.online_calibration`
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
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kascade.calibration.agreement import answers_agree
from kascade.calibration.online import bin_key
from kascade.runtime.attempts import usage_of
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.escalation.records import DeclinedSeen, answer_of
from kascade.runtime.ledger import Ledger, TierCall

if TYPE_CHECKING:
    from kascade.runtime.config import ShadowSamplingConfig

log = logging.getLogger("kascade.router.shadow")

AskLastTier = Callable[[Endpoint, dict[str, Any]], Awaitable[dict[str, Any]]]
OnShadow = Callable[[Endpoint, dict[str, Any], Mapping[str, Any], Sequence[DeclinedSeen], bool], None]


class ShadowSampler:
    def __init__(
        self,
        config: ShadowSamplingConfig,
        ledger: Ledger,
        *,
        last_tier: str,
        ask_last_tier: AskLastTier,
        on_shadow: OnShadow | None = None,
        draw: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self._kind = config.matcher
        self._ledger = ledger
        self._last_tier = last_tier
        self._ask_last_tier = ask_last_tier
        self._on_shadow = on_shadow
        self._draw = draw
        self._clock = clock
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
        started = self._clock()
        try:
            response = await self._ask_last_tier(endpoint, body)
        except Exception as error:  # noqa: BLE001 - a shadow call that fails loses a sample, nothing else
            self.failed += 1
            log.debug("a shadow call to the last tier failed: %s", error)
            return
        input_tokens, output_tokens = usage_of(response)
        call = TierCall(self._last_tier, input_tokens, output_tokens, self._clock() - started, ok=True)
        self._ledger.record_shadow(call, answered)
        last = answer_of(endpoint, response)
        agreed = self.note_pairs(asked, last.text)
        if self._on_shadow is not None:
            self._on_shadow(endpoint, body, response, asked, all(agreed.values()))

    async def close(self) -> None:
        """Stop: shadow calls still in flight are cancelled (a sample lost; the caller was answered long ago)."""
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
