"""The LLM judge of `matcher: judge` in the router: one chat call per question, its verdict from the first token.

Each question is one chat-completions call, built by
`kascade.calibration.judge.judge_body` (the request as text by
`kascade.calibration.prompt_text.request_text`): to the cascade's last tier
through the engine the router already has for it, or to `calibration.judge.url`
with its model and key. At most `concurrency` calls are in flight; a question
beyond is not asked (None, counted `judgeSkipped`). Each call runs within the
router's timeout. Its verdict is P(yes) among yes and no in the top logprobs of
its first token (`kascade.runtime.logprobs.first_token_alternatives`, then
`kascade.calibration.judge.verdict`): the answers agree when it is at least
`min_probability`. A call that gives no verdict (an error, an unreachable
judge, no logprobs, neither yes nor no) is None and a `judgeFailures`: the
sample is lost, never guessed, and nobody's answer waited for it.

Every call is paid: the tokens its usage reports, at the judge's price, go to
the ledger's `judgeCalls` and `judgeCost` and into `actual` (real spend, so the
savings shown are net of judging), apart from the shadow calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kascade.api.agreement import AnswerMatcher
from kascade.calibration.judge import judge_body, verdict
from kascade.calibration.prompt_text import request_text
from kascade.runtime.attempts import usage_of
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.ledger import usage_cost
from kascade.runtime.logprobs import first_token_alternatives

if TYPE_CHECKING:
    from kascade.runtime.config import JudgeConfig
    from kascade.runtime.engines.base import Engine
    from kascade.runtime.ledger import Ledger
    from kascade.runtime.metrics import RouterMetrics
    from kascade.runtime.online.agreement import AgreementQuestion

log = logging.getLogger("kascade.router.judge")


class LLMJudge:
    """Asks `engine` (the last tier's, or one of its own for a judge.url: `owns_engine`) within `timeout_seconds`."""

    matcher = AnswerMatcher.judge

    def __init__(
        self,
        config: JudgeConfig,
        engine: Engine,
        ledger: Ledger,
        *,
        timeout_seconds: float,
        metrics: RouterMetrics | None = None,
        owns_engine: bool = False,
    ) -> None:
        self.config = config
        self._engine = engine
        self._ledger = ledger
        self._timeout_seconds = timeout_seconds
        self._metrics = metrics
        self._owns_engine = owns_engine
        self.in_flight = 0

    async def agree(self, questions: Sequence[AgreementQuestion]) -> list[bool | None]:
        """Each question's verdict (None: not asked, or no verdict), the calls made side by side."""
        return list(await asyncio.gather(*(self._judge(question) for question in questions)))

    async def _judge(self, question: AgreementQuestion) -> bool | None:
        if self.in_flight >= self.config.concurrency:  # checked and taken before any await: no race
            self._ledger.note_judge_skipped()
            self._observe("skipped")
            return None
        self.in_flight += 1
        try:
            probability, cost = await self._ask(question)
        finally:
            self.in_flight -= 1
        self._ledger.record_judge_call(cost, verdict=probability is not None)
        self._observe("no_verdict" if probability is None else "verdict", cost)
        return None if probability is None else probability >= self.config.min_probability

    async def _ask(self, question: AgreementQuestion) -> tuple[float | None, float]:
        """(P(yes), or None for no verdict; what the call cost)."""
        body = judge_body(self.config.model, request_text(question.body), question.answer, question.reference)
        try:
            async with asyncio.timeout(self._timeout_seconds):
                response = await self._engine.call(Endpoint.chat, body)
        except Exception as error:  # noqa: BLE001 - a judge call that fails loses a sample, nothing else
            log.debug("a judge call failed: %s", error)
            return None, 0.0
        cost = usage_cost(self.config.price, *usage_of(response))
        probability = verdict(first_token_alternatives(response))
        if probability is None:
            log.debug("the judge answered no verdict: %s", str(response)[:200])
        return probability, cost

    def _observe(self, outcome: str, cost: float = 0.0) -> None:
        if self._metrics is not None:
            self._metrics.observe_judge(outcome, cost)

    async def close(self) -> None:
        """Release the judge's own engine (a judge.url's); the last tier's engine is the router's to close."""
        if self._owns_engine:
            await self._engine.aclose()
