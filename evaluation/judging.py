"""A two-tier cascade's answers, judged: who is right, who agrees, what each call cost.

The small tier is the cascade's first tier, the last is its last; a middle
tier (a cascade of three or more) is not evaluated yet (`check_two_tiers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kascade.api.modelcascade import ModelCascade, Price
from kascade.evaluation.curves import Judged
from kascade.evaluation.matchers import Matcher
from kascade.evaluation.records import Example, TierAnswer


class TooManyTiers(Exception):
    pass


def check_two_tiers(cascade: ModelCascade) -> None:
    if len(cascade.spec.tiers) != 2:
        raise TooManyTiers(
            f"{cascade.metadata.name} has {len(cascade.spec.tiers)} tiers: kascade eval and calibrate compare a "
            "small tier with the last one, so give a manifest of two tiers (evaluate a longer cascade pair by pair)"
        )


def call_cost(price: Price, answer: TierAnswer) -> float:
    """What one call cost by its real token counts, in the price's currency."""
    return (price.input_per_million * answer.prompt_tokens + price.output_per_million * answer.completion_tokens) / 1e6


@dataclass(frozen=True)
class JudgedPair:
    """Every example with both tiers' answers, judged once; scores are attached per method later."""

    examples: tuple[Example, ...]
    small: tuple[TierAnswer, ...]
    last: tuple[TierAnswer, ...]
    small_correct: tuple[bool | None, ...]
    last_correct: tuple[bool | None, ...]
    agrees: tuple[bool, ...]
    small_cost: tuple[float, ...]
    last_cost: tuple[float, ...]
    matcher: str

    def with_scores(self, scores: Sequence[float], indices: Sequence[int] | None = None) -> list[Judged]:
        """The examples (all, or those at `indices`) as `curves.Judged` under one method's scores."""
        chosen = range(len(self.examples)) if indices is None else indices
        return [
            Judged(
                scores[i],
                self.agrees[i],
                self.small_correct[i],
                self.last_correct[i],
                self.small_cost[i],
                self.last_cost[i],
            )
            for i in chosen
        ]

    @property
    def labelled(self) -> bool:
        return all(c is not None for c in self.small_correct) and all(c is not None for c in self.last_correct)

    def targets(self) -> list[bool]:
        """What a learned score predicts: correctness where there are references, else agreement."""
        if self.labelled:
            return [bool(c) for c in self.small_correct]
        return list(self.agrees)


def judge_pair(
    cascade: ModelCascade, examples: Sequence[Example], answers: dict[str, list[TierAnswer]], matcher: Matcher
) -> JudgedPair:
    small_tier, last_tier = cascade.spec.tiers[0], cascade.spec.tiers[-1]
    small, last = answers[small_tier.name], answers[last_tier.name]
    small_correct = matcher.correct(examples, small)
    last_correct = matcher.correct(examples, last)
    agrees = matcher.agree(small, last, left_correct=small_correct, right_correct=last_correct, examples=examples)
    return JudgedPair(
        examples=tuple(examples),
        small=tuple(small),
        last=tuple(last),
        small_correct=tuple(small_correct),
        last_correct=tuple(last_correct),
        agrees=tuple(agrees),
        small_cost=tuple(call_cost(small_tier.price, a) for a in small),
        last_cost=tuple(call_cost(last_tier.price, a) for a in last),
        matcher=matcher.name,
    )
