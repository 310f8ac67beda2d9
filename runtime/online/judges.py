"""The router's agreement judge, built from its config: one per router, closed with its shadow sampler.

- label, number, exact: `TextMatch` (the two texts decide, at once);
- semantic: `SemanticJudge` (`kascade.runtime.online.semantic`: the packaged
  encoder on ONNX Runtime, imported only by a router that judges with it);
- judge: `LLMJudge` (`kascade.runtime.online.llm_judge`), asking the last tier
  through the engine the router has for it, or the judge.url on the router's
  pooled HTTP session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kascade.api.agreement import AnswerMatcher
from kascade.runtime.engines.http import HttpEngine
from kascade.runtime.online.agreement import AgreementJudge, TextMatch
from kascade.runtime.online.llm_judge import LLMJudge

if TYPE_CHECKING:
    import aiohttp

    from kascade.runtime.config import JudgeConfig, ShadowSamplingConfig, TierConfig
    from kascade.runtime.engines.base import Engine
    from kascade.runtime.ledger import Ledger
    from kascade.runtime.metrics import RouterMetrics


def agreement_judge(
    config: ShadowSamplingConfig,
    ledger: Ledger,
    *,
    last_tier: TierConfig,
    last_engine: Engine,
    timeout_seconds: float,
    metrics: RouterMetrics | None = None,
    session: aiohttp.ClientSession | None = None,
) -> AgreementJudge:
    """The judge of `config.matcher`; a judge whose price is in another currency than the tiers' is refused."""
    matcher = config.matcher
    if matcher.pure:
        return TextMatch(matcher)
    if matcher is AnswerMatcher.semantic and config.semantic is not None:
        from kascade.runtime.online.semantic import SemanticJudge  # onnxruntime, only for a router that needs it

        return SemanticJudge.from_config(config.semantic)
    if matcher is AnswerMatcher.judge and config.judge is not None:
        judge = config.judge
        if judge.price.currency != last_tier.price.currency:
            raise ValueError(
                f"calibration.judge.price is in {judge.price.currency}, the tiers' prices in "
                f"{last_tier.price.currency}: price the judge in the same currency"
            )
        engine, owned = _judge_engine(judge, last_engine, timeout_seconds, session)
        return LLMJudge(judge, engine, ledger, timeout_seconds=timeout_seconds, metrics=metrics, owns_engine=owned)
    raise ValueError(f"matcher {matcher.value} cannot judge in the router")


def _judge_engine(
    judge: JudgeConfig, last_engine: Engine, timeout_seconds: float, session: aiohttp.ClientSession | None
) -> tuple[Engine, bool]:
    """(the engine the judge is asked through, whether it is the judge's own to close)."""
    if judge.url is None:
        return last_engine, False
    return HttpEngine(judge.url, api_key=judge.read_api_key(), timeout=timeout_seconds, session=session), True
