"""The LLM judge of `matcher: judge`: one chat call per question, the verdict from its first token's top logprobs,
every call paid and counted, failures and skips counted and never taken for agreement."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kascade.api.modelcascade import Price
from kascade.calibration.judge import SYSTEM_PROMPT, TOP_LOGPROBS
from kascade.runtime.config import JudgeConfig
from kascade.runtime.engines import vllm_layout as layout
from kascade.runtime.engines.base import Endpoint, TierError, TierErrorKind
from kascade.runtime.engines.http import HttpEngine
from kascade.runtime.ledger import Ledger, usage_cost
from kascade.runtime.logprobs import first_token_alternatives
from kascade.runtime.online.agreement import AgreementQuestion
from kascade.runtime.online.llm_judge import LLMJudge
from kascade.runtime.serving import free_port

PRICE = Price(input_per_million=1.0, output_per_million=2.0)
ASKED = {"model": "demo", "messages": [{"role": "user", "content": "Capital of France?"}]}
QUESTION = AgreementQuestion(body=ASKED, answer="It is Paris.", reference="Paris is the capital.")


def _config(**changes: Any) -> JudgeConfig:
    return JudgeConfig(**{"model": "large-model", "price": PRICE, **changes})


def _judge_response(alternatives: dict[str, float] | None, *, prompt_tokens: int = 120) -> dict[str, Any]:
    alternatives = alternatives or {"yes": 1.0}
    token = max(alternatives, key=alternatives.__getitem__)
    top = tuple((name, math.log(p)) for name, p in alternatives.items())
    return layout.chat_completion(
        layout.ResponseHeader("chatcmpl-judge", 0, "large-model"),
        token,
        logprobs=layout.chat_logprobs([layout.TokenLogprobs(token, math.log(alternatives[token]), top)]),
        finish_reason="length",
        stop_reason=None,
        token_usage=layout.usage(prompt_tokens, 1),
    )


class ScriptedEngine:
    """Answers every call with `response` (or raises `error`) after `delay` seconds; keeps the bodies."""

    def __init__(self, response: dict[str, Any] | None = None, *, error: Exception | None = None, delay: float = 0.0):
        self.response, self.error, self.delay = response, error, delay
        self.bodies: list[dict[str, Any]] = []
        self.closed = False

    async def call(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        assert endpoint is Endpoint.chat
        self.bodies.append(body)
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response

    def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        raise NotImplementedError

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        self.closed = True


def _judge(engine: Any, ledger: Ledger, *, timeout: float = 5.0, **config: Any) -> LLMJudge:
    return LLMJudge(_config(**config), engine, ledger, timeout_seconds=timeout)


def _ledger() -> Ledger:
    return Ledger({"small": Price(), "large": PRICE})


def test_a_yes_is_agreement_and_the_call_is_paid_at_the_judges_price() -> None:
    ledger = _ledger()
    engine = ScriptedEngine(_judge_response({"yes": 0.8, "no": 0.2}))
    assert asyncio.run(_judge(engine, ledger).agree([QUESTION])) == [True]
    (body,) = engine.bodies
    assert body["model"] == "large-model" and body["max_tokens"] == 1 and body["logprobs"] is True
    assert body["top_logprobs"] == TOP_LOGPROBS and body["messages"][0]["content"] == SYSTEM_PROMPT
    asked = body["messages"][1]["content"]
    assert "user: Capital of France?" in asked and "It is Paris." in asked and "Paris is the capital." in asked
    slot = ledger.counter_slot()
    assert slot.judge_calls == 1 and slot.judge_failures == 0 and slot.judge_skipped == 0
    assert slot.judge_cost == pytest.approx(usage_cost(PRICE, 120, 1))
    assert slot.cost.actual == pytest.approx(slot.judge_cost)  # real spend: in actual
    assert slot.tiers["large"].calls == 0  # apart from the tiers' calls and the shadow calls
    assert slot.shadow_calls == 0


def test_the_verdict_is_read_against_min_probability() -> None:
    engine = ScriptedEngine(_judge_response({"yes": 0.6, "no": 0.4}))
    assert asyncio.run(_judge(engine, _ledger(), min_probability=0.5).agree([QUESTION])) == [True]
    assert asyncio.run(_judge(engine, _ledger(), min_probability=0.7).agree([QUESTION])) == [False]
    no = ScriptedEngine(_judge_response({"no": 0.9, "yes": 0.1}))
    assert asyncio.run(_judge(no, _ledger()).agree([QUESTION])) == [False]


@pytest.mark.parametrize(
    "engine",
    [
        ScriptedEngine(_judge_response({"Paris": 0.7, "The": 0.3})),  # garbage: neither yes nor no
        ScriptedEngine({**_judge_response(None), "choices": [{"index": 0, "message": {"content": "yes"}}]}),
        ScriptedEngine(error=TierError(TierErrorKind.server, "judge down", status=500)),
        ScriptedEngine(error=RuntimeError("unexpected")),
    ],
    ids=["garbage", "no-logprobs", "error", "crash"],
)
def test_no_verdict_is_none_and_a_counted_failure(engine: ScriptedEngine) -> None:
    ledger = _ledger()
    assert asyncio.run(_judge(engine, ledger).agree([QUESTION, QUESTION])) == [None, None]
    slot = ledger.counter_slot()
    assert slot.judge_calls == 2 and slot.judge_failures == 2
    assert slot.calibration_samples == {}  # nothing counted as agreement


def test_a_judge_slower_than_the_timeout_is_a_failure() -> None:
    ledger = _ledger()
    engine = ScriptedEngine(_judge_response({"yes": 1.0}), delay=1.0)
    assert asyncio.run(_judge(engine, ledger, timeout=0.05).agree([QUESTION])) == [None]
    assert ledger.counter_slot().judge_failures == 1


def test_questions_beyond_the_concurrency_are_skipped_and_counted() -> None:
    ledger = _ledger()
    engine = ScriptedEngine(_judge_response({"yes": 1.0}), delay=0.05)
    judge = _judge(engine, ledger, concurrency=2)
    assert asyncio.run(judge.agree([QUESTION] * 5)) == [True, True, None, None, None]
    slot = ledger.counter_slot()
    assert slot.judge_calls == 2 and slot.judge_skipped == 3 and slot.judge_failures == 0
    assert len(engine.bodies) == 2 and judge.in_flight == 0


def test_only_an_engine_of_its_own_is_closed() -> None:
    shared, own = ScriptedEngine(), ScriptedEngine()
    asyncio.run(LLMJudge(_config(), shared, _ledger(), timeout_seconds=1.0).close())
    asyncio.run(LLMJudge(_config(), own, _ledger(), timeout_seconds=1.0, owns_engine=True).close())
    assert not shared.closed and own.closed


def test_the_first_tokens_alternatives_include_the_chosen_token() -> None:
    response = _judge_response({"yes": 0.7, " No": 0.3})
    assert first_token_alternatives(response) == pytest.approx({"yes": math.log(0.7), " No": math.log(0.3)})
    assert first_token_alternatives({"choices": [{"message": {"content": "yes"}}]}) == {}
    twice = _judge_response({"yes": 0.4, "no": 0.2})
    twice["choices"][0]["logprobs"]["content"][0]["top_logprobs"].append({"token": "yes", "logprob": math.log(0.3)})
    assert first_token_alternatives(twice)["yes"] == pytest.approx(math.log(0.7))  # one spelling, two ids: added
    assert first_token_alternatives({"choices": "nonsense"}) == {}


@pytest.mark.slow
def test_over_http_a_yes_judge_agrees_and_an_unreachable_one_fails(start_judging_upstream: Any) -> None:
    upstream = start_judging_upstream()  # answers the judge's question: yes 0.9
    ledger = _ledger()

    async def ask(url: str) -> list[bool | None]:
        engine = HttpEngine(url, timeout=5.0)
        judge = LLMJudge(_config(url=url), engine, ledger, timeout_seconds=5.0, owns_engine=True)
        try:
            return await judge.agree([QUESTION])
        finally:
            await judge.close()

    assert asyncio.run(ask(upstream.url)) == [True]
    assert len(upstream.judge.questions) == 1 and upstream.behaviour.requests == 0  # the caller's path untouched
    assert asyncio.run(ask(f"http://127.0.0.1:{free_port()}/v1")) == [None]  # nothing listens there
    slot = ledger.counter_slot()
    assert slot.judge_calls == 2 and slot.judge_failures == 1
