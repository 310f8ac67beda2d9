"""The router's agreement judge from its config, and the sampler that owns it: judging in the background, closed
with the router."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from kascade.api.agreement import AnswerMatcher
from kascade.api.escalation_record import ModelIdentity
from kascade.api.modelcascade import Price
from kascade.runtime.config import JudgeConfig, ShadowSamplingConfig, TierConfig
from kascade.runtime.engines.http import HttpEngine
from kascade.runtime.escalation.records import DeclinedSeen
from kascade.runtime.ledger import Ledger
from kascade.runtime.online.agreement import AgreementQuestion, TextMatch
from kascade.runtime.online.judges import agreement_judge
from kascade.runtime.online.llm_judge import LLMJudge
from kascade.runtime.online.shadow_sampling import ShadowSampler

LARGE = TierConfig(name="large", served_model="large-model", url="http://large/v1", price=Price(input_per_million=1))
SMALL = ModelIdentity(tier="small", served_model="small-model")
LAST_ENGINE: Any = object()  # never called here


def _ledger() -> Ledger:
    return Ledger({"small": Price(), "large": LARGE.price})


def _sampling(matcher: AnswerMatcher, **judge: Any) -> ShadowSamplingConfig:
    config = JudgeConfig(**{"model": "large-model", "price": LARGE.price, **judge})
    return ShadowSamplingConfig(rate=1.0, matcher=matcher, judge=config if matcher is AnswerMatcher.judge else None)


def _judge(config: ShadowSamplingConfig) -> Any:
    return agreement_judge(config, _ledger(), last_tier=LARGE, last_engine=LAST_ENGINE, timeout_seconds=5.0)


def test_a_pure_matcher_is_decided_by_the_texts() -> None:
    judge = _judge(_sampling(AnswerMatcher.number))
    assert isinstance(judge, TextMatch) and judge.matcher is AnswerMatcher.number
    questions = [AgreementQuestion({}, "it is 4", "4.0"), AgreementQuestion({}, "5", "4")]
    assert asyncio.run(judge.agree(questions)) == [True, False]


def test_the_judge_is_the_last_tier_unless_a_url_is_named() -> None:
    judge = _judge(_sampling(AnswerMatcher.judge))
    assert isinstance(judge, LLMJudge) and judge._engine is LAST_ENGINE and not judge._owns_engine
    external = _judge(_sampling(AnswerMatcher.judge, url="https://judge.example/v1", model="judge"))
    assert isinstance(external, LLMJudge) and isinstance(external._engine, HttpEngine) and external._owns_engine
    assert external._engine.base_url == "https://judge.example/v1"


def test_a_judge_priced_in_another_currency_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="same currency"):
        _judge(_sampling(AnswerMatcher.judge, price=Price(currency="EUR", input_per_million=1)))


def test_the_sampler_ends_judging_in_flight_and_closes_its_judge() -> None:
    class StuckJudge:
        matcher = AnswerMatcher.judge

        def __init__(self) -> None:
            self.asked: list[Sequence[AgreementQuestion]] = []
            self.closed = False

        async def agree(self, questions: Sequence[AgreementQuestion]) -> list[bool | None]:
            self.asked.append(questions)
            await asyncio.sleep(60)
            return [True] * len(questions)

        async def close(self) -> None:
            self.closed = True

    judge, ledger = StuckJudge(), _ledger()
    sampler = ShadowSampler(
        _sampling(AnswerMatcher.judge), ledger, last_tier=LARGE, engine=LAST_ENGINE, judge=judge, timeout_seconds=1
    )

    async def run() -> None:
        declined = DeclinedSeen(model=SMALL, text="Lyon", score=0.3, method="geometricMean", threshold=0.5)
        sampler.judge_pairs({"messages": []}, [declined], "Paris")  # returns at once: the caller never waits
        await asyncio.sleep(0.01)
        assert len(judge.asked) == 1 and judge.asked[0][0].answer == "Lyon"
        await sampler.close()

    asyncio.run(run())
    assert judge.closed and ledger.counter_slot().calibration_samples == {}  # cancelled: nothing counted
