"""Online calibration's measurements: (score, agreed?) pairs from a drawn share of requests, off the response path.

A request is drawn (`drawn`) with probability `rate` (`kascade.calibration.online`
says why a draw independent of the score is what the threshold selection
needs). A drawn request that reached the last tier already has both answers:
each declined tier's answer is judged against the last tier's (`judge_pairs`). A
drawn request that a tier before the last accepted is also sent to the last
tier, as a background task: at most `concurrency` in flight (beyond, the sample
is skipped and counted), never awaited by the request, its answer never shown
to the caller. Its cost is recorded in the ledger (`record_shadow`: in the last
tier's calls and in `actual`, and apart as `shadowCost`); with an escalation
log on, it is also kept there as a `shadow` record with its `agreed` label.

Agreement is judged by the router's `AgreementJudge` (`kascade.runtime.online.judges`),
always in a background task: the caller has its answer before any judging
starts. Each verdict is counted in the tier's score bin; a question the judge
could not answer (None) is lost and counted (`unjudged`, and by the judge
itself), never counted as agreement. A shadow record's `agreed` is the same
verdict (every tier asked agreed); a shadow sample with no verdict keeps no
record, since its label is what makes it one.

The sampler calls the last tier's engine and the judge itself and hands shadow
records to the log's keeper: it calls back into nothing that holds it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kascade.calibration.online import bin_key
from kascade.runtime.attempts import usage_of
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.escalation.records import DeclinedSeen, answer_of, model_identity
from kascade.runtime.ledger import Ledger, TierCall
from kascade.runtime.online.agreement import AgreementJudge, AgreementQuestion

if TYPE_CHECKING:
    from kascade.runtime.config import ShadowSamplingConfig, TierConfig
    from kascade.runtime.engines.base import Engine
    from kascade.runtime.escalation.keeping import EscalationKeeper

log = logging.getLogger("kascade.router.shadow")


class ShadowSampler:
    """`last_tier` and its `engine` answer the shadow calls within `timeout_seconds`; `judge` judges every pair
    (the sampler closes it); `keeper` (with a log) keeps the shadow samples."""

    def __init__(
        self,
        config: ShadowSamplingConfig,
        ledger: Ledger,
        *,
        last_tier: TierConfig,
        engine: Engine,
        judge: AgreementJudge,
        timeout_seconds: float,
        keeper: EscalationKeeper | None = None,
        draw: Callable[[], float] = random.random,
        latency_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.judge = judge
        self._ledger = ledger
        self._last_tier = last_tier
        self._last_identity = model_identity(last_tier)
        self._engine = engine
        self._timeout_seconds = timeout_seconds
        self._keeper = keeper
        self._draw = draw
        self._latency_clock = latency_clock
        self._in_flight: set[asyncio.Task[None]] = set()  # shadow calls (each judges its own pairs)
        self._judging: set[asyncio.Task[bool | None]] = set()  # pairs of drawn escalated requests
        self.skipped = 0  # drawn, but `concurrency` shadow calls were already in flight
        self.failed = 0  # shadow calls the last tier did not answer
        self.unjudged = 0  # pairs the judge gave no verdict on (lost)

    def drawn(self) -> bool:
        return self._draw() < self.config.rate

    def stats(self) -> dict[str, float | int]:
        """What `/stats` shows of the sampling (`shadowSampling`)."""
        return {"rate": self.config.rate, "skipped": self.skipped, "failed": self.failed, "unjudged": self.unjudged}

    def judge_pairs(
        self, body: Mapping[str, Any], asked: Sequence[DeclinedSeen], reference: str
    ) -> asyncio.Task[bool | None]:
        """Judge each answer in `asked` against `reference`, the last tier's answer to the same request `body`, in
        the background, each verdict counted in its tier's score bin; the caller never waits. Bounded by the
        judge: the pure matchers decide at once, an LLM judge skips beyond its concurrency. The task's result:
        whether every answer agreed (None: one was not judged and none disagreed), for a background task that
        keeps a record with it (a probe)."""
        task = asyncio.get_running_loop().create_task(self._note_pairs(dict(body), asked, reference))
        self._judging.add(task)
        task.add_done_callback(self._judging.discard)
        return task

    async def _note_pairs(self, body: Mapping[str, Any], asked: Sequence[DeclinedSeen], reference: str) -> bool | None:
        """Judge and count each pair; whether every tier agreed (None: one was not judged and none disagreed)."""
        questions = [AgreementQuestion(body=body, answer=answer.text, reference=reference) for answer in asked]
        try:
            verdicts = await self.judge.agree(questions)
        except Exception as error:  # noqa: BLE001 - a judge that breaks loses its samples, never an answer
            log.warning("the agreement judge failed: %s", error)
            verdicts = [None] * len(questions)
        for answer, agreed in zip(asked, verdicts, strict=True):
            if agreed is None:
                self.unjudged += 1
            else:
                self._ledger.note_agreement(bin_key(answer.model.tier, answer.score), agreed=agreed)
        if False in verdicts:
            return False
        return None if None in verdicts else True

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
        agreed = await self._note_pairs(body, asked, last.text)
        if self._keeper is not None and agreed is not None:  # teacher data too, labelled
            self._keeper.keep(endpoint, body, asked, self._last_identity, last, tokens, agreed=agreed)

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
        """Stop: shadow calls and judging still in flight are cancelled (samples lost; the callers were answered
        long ago); then the judge is closed."""
        running = [*self._in_flight, *self._judging]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await self.judge.close()
