"""The tier loop on its own, with in-memory engines: which tier answers, what is paid, what the caller gets."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kascade.api.modelcascade import Accept, OnTierError, Streaming
from kascade.runtime.cascade import Cascade, CascadeFailed
from kascade.runtime.config import RouterConfig, TierConfig
from kascade.runtime.engines.base import Endpoint, TierError, TierErrorKind
from kascade.runtime.ledger import Ledger, RequestOutcome

ASK = {"model": "demo", "messages": [{"role": "user", "content": "Hi"}]}


def _token(prob: float) -> dict[str, Any]:
    logprob = math.log(prob)
    return {"token": "x", "logprob": logprob, "top_logprobs": [{"token": "x", "logprob": logprob}]}


def _chunk(prob: float) -> dict[str, Any]:
    return {
        "choices": [
            {"index": 0, "delta": {"content": "x"}, "logprobs": {"content": [_token(prob)]}, "finish_reason": None}
        ]
    }


class FakeEngine:
    """Answers with `tokens` tokens of probability `prob`; `fail` raises instead, `fail_after` mid-stream."""

    def __init__(
        self, prob: float = 0.9, *, tokens: int = 6, fail: TierError | None = None, fail_after: int | None = None
    ) -> None:
        self.prob, self.tokens, self.fail, self.fail_after = prob, tokens, fail, fail_after
        self.closed_streams = 0

    async def call(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        message = {"role": "assistant", "content": "x" * self.tokens}
        logprobs = {"content": [_token(self.prob)] * self.tokens}
        return {
            "id": "r",
            "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": self.tokens},
        }

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        if self.fail is not None:
            raise self.fail
        try:
            for index in range(self.tokens):
                if index == self.fail_after:
                    raise TierError(TierErrorKind.server, "broke mid-stream")
                yield _chunk(self.prob)
            yield {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": self.tokens}}
        finally:
            self.closed_streams += 1

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


class RecordingLedger(Ledger):
    def __init__(self, config: RouterConfig) -> None:
        super().__init__({tier.name: tier.price for tier in config.tiers})
        self.outcomes: list[RequestOutcome] = []

    def record(self, outcome: RequestOutcome) -> float:
        self.outcomes.append(outcome)
        return super().record(outcome)


def cascade(small: FakeEngine, large: FakeEngine, **router: Any) -> tuple[Cascade, RecordingLedger]:
    config = RouterConfig(
        cascade="demo",
        tiers=[
            TierConfig(name="small", served_model="s", accept=Accept(threshold=0.5)),
            TierConfig(name="large", served_model="l"),
        ],
        retries=0,
        **router,
    )
    ledger = RecordingLedger(config)
    return Cascade(config, {"small": small, "large": large}, ledger), ledger


async def _drain(chunks: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in chunks]


def test_a_confident_small_tier_answers_and_is_paid_once() -> None:
    runner, ledger = cascade(FakeEngine(0.9), FakeEngine())
    answer = asyncio.run(runner.answer(Endpoint.chat, ASK))
    assert (answer.tier, answer.escalated, answer.response["model"]) == ("small", False, "s")
    assert answer.trail == "small=0.9000"
    [outcome] = ledger.outcomes
    assert outcome.answered_by == "small" and [call.output_tokens for call in outcome.calls] == [6]


def test_buffer_mode_replays_a_confident_answer_as_a_stream() -> None:
    runner, ledger = cascade(FakeEngine(0.9), FakeEngine())
    answer = asyncio.run(runner.answer_streaming(Endpoint.chat, {**ASK, "stream": True}))
    chunks = asyncio.run(_drain(answer.chunks))
    assert answer.tier == "small" and chunks[1]["choices"][0]["delta"]["content"] == "xxxxxx"
    assert ledger.outcomes[0].answered_by == "small"


def test_early_mode_closes_an_unsure_stream_counts_its_tokens_and_relays_the_large_tier() -> None:
    small, large = FakeEngine(0.1), FakeEngine(0.9)
    runner, ledger = cascade(small, large, streaming=Streaming(mode="early", early_tokens=2))

    async def run() -> tuple[Any, list[dict[str, Any]]]:
        answer = await runner.answer_streaming(Endpoint.chat, {**ASK, "stream": True})
        return answer, await _drain(answer.chunks)

    answer, chunks = asyncio.run(run())
    assert (answer.tier, answer.escalated, answer.trail) == ("large", True, "small=0.1000,large")
    assert small.closed_streams == 1 and len(chunks) == 6
    [outcome] = ledger.outcomes
    assert outcome.answered_by == "large"
    assert [(call.tier, call.output_tokens, call.ok) for call in outcome.calls] == [
        ("small", 2, True),
        ("large", 6, True),
    ]


def test_early_mode_escalates_past_a_stream_that_breaks_while_being_scored() -> None:
    runner, ledger = cascade(
        FakeEngine(0.9, fail_after=1), FakeEngine(), streaming=Streaming(mode="early", early_tokens=4)
    )

    async def run() -> Any:
        answer = await runner.answer_streaming(Endpoint.chat, {**ASK, "stream": True})
        await _drain(answer.chunks)
        return answer

    answer = asyncio.run(run())
    assert (answer.tier, answer.trail) == ("large", "small=error,large")
    assert [(call.tier, call.ok) for call in ledger.outcomes[0].calls] == [("small", False), ("large", True)]


@pytest.mark.parametrize("streaming", [False, True])
def test_a_failing_last_tier_fails_the_request_and_is_booked(streaming: bool) -> None:
    runner, ledger = cascade(FakeEngine(0.1), FakeEngine(fail=TierError(TierErrorKind.unavailable, "down")))
    ask = runner.answer_streaming if streaming else runner.answer
    with pytest.raises(CascadeFailed) as failed:
        asyncio.run(ask(Endpoint.chat, {**ASK, "stream": streaming}))
    assert failed.value.status == 503
    [outcome] = ledger.outcomes
    assert outcome.answered_by is None and outcome.escalated


def test_on_tier_error_fail_stops_at_the_first_failing_tier() -> None:
    refused = TierError(TierErrorKind.client, "too long", status=400, body={"error": {"message": "too long"}})
    runner, ledger = cascade(FakeEngine(fail=refused), FakeEngine(), on_tier_error=OnTierError.fail)
    with pytest.raises(CascadeFailed) as failed:
        asyncio.run(runner.answer(Endpoint.chat, ASK))
    assert (failed.value.status, failed.value.body) == (400, refused.body)
    assert [call.tier for call in ledger.outcomes[0].calls] == ["small"]


def test_the_learned_rule_and_a_span_score_the_live_answer_with_its_request() -> None:
    """The router scores with the manifest's learned parameters, reading the prompt's length from usage."""
    learned = Accept(
        method="learned",
        threshold=0.5,
        span="notCopied",
        learned={"features": ["minProb", "logPromptTokens"], "weights": [4.0, -1.0], "bias": 0.0},
    )
    config = RouterConfig(
        cascade="demo",
        retries=0,
        tiers=[TierConfig(name="small", served_model="s", accept=learned), TierConfig(name="large", served_model="l")],
    )
    runner = Cascade(config, {"small": FakeEngine(0.9), "large": FakeEngine()}, RecordingLedger(config))
    answer = asyncio.run(runner.answer(Endpoint.chat, ASK))
    expected = 1 / (1 + math.exp(-(4.0 * 0.9 - math.log(4))))  # minProb 0.9; 3 prompt tokens
    assert answer.tier == "small" and answer.trail == f"small={expected:.4f}"


def test_new_thresholds_are_in_force_for_the_next_request_without_a_restart() -> None:
    runner, ledger = cascade(FakeEngine(0.7), FakeEngine())
    assert asyncio.run(runner.answer(Endpoint.chat, ASK)).tier == "small"  # 0.7 >= 0.5
    assert runner.set_thresholds({"small": 0.8, "large": 0.1, "absent": 0.3}) == {"small": 0.8}
    assert runner.set_thresholds({"small": 0.8}) == {}  # already in force: nothing changes
    assert asyncio.run(runner.answer(Endpoint.chat, ASK)).tier == "large"  # 0.7 < 0.8
    assert runner.last_tier.config.accept is None  # the last tier is never scored, whatever is asked
    assert [outcome.answered_by for outcome in ledger.outcomes] == ["small", "large"]
