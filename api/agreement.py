"""How answers are judged to agree: the matchers, and the LLM judge of `matcher: judge`.

Part of the ModelCascade API (`kascade.api.loop` re-exports it): online
calibration, the escalation log's `agreed`, the promotion gate and
`kascade eval`/`calibrate` all name their matcher from here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema, model_validator

from kascade.api.base import SpecModel
from kascade.api.parts import Price, SecretKeyRef

OFFLINE_ONLY_MATCHER = (
    "matcher {matcher} judges offline only (kascade eval/calibrate); "
    "online calibration and a run's gate judge with label, number, exact, semantic or judge"
)
JUDGE_URL_NEEDS_A_MODEL = "calibration.judge: url and model go together (the model to ask at that endpoint)"


class AnswerMatcher(StrEnum):
    """How an answer is judged against a reference or another tier's answer: one list for every judge.

    Online calibration, the escalation log's `agreed`, the promotion gate and
    `kascade eval`/`calibrate` all name their matcher from here. The pure ones
    (`kascade.calibration.agreement`) run anywhere; `semantic` needs the packaged
    encoder (`kascade[semantic]`: ONNX Runtime, no torch) and `judge` an LLM to
    ask; the offline-only one needs resources only `kascade eval` has
    (`kascade.evaluation.matchers`).
    """

    label = "label"  # the same class label (case and surrounding spaces ignored)
    number = "number"  # the same final number (integers, decimals, fractions)
    exact = "exact"  # the same text, whitespace collapsed
    semantic = "semantic"  # free text: embedding cosine (the packaged MiniLM) at or above `semanticCutoff`
    judge = "judge"  # free text: an LLM judge says the answer is as correct and complete as the reference
    code = "code"  # offline only: a program, right when the example's tests pass (a sandboxed process)

    @property
    def offline_only(self) -> bool:
        """Whether only `kascade eval`/`calibrate` can judge with it (tests to run in a sandbox)."""
        return self in OFFLINE_ONLY_MATCHERS

    @property
    def pure(self) -> bool:
        """Whether two texts alone decide it, at once (no encoder to run, no judge to ask)."""
        return self in PURE_MATCHERS


OFFLINE_ONLY_MATCHERS = frozenset({AnswerMatcher.code})
PURE_MATCHERS = frozenset({AnswerMatcher.label, AnswerMatcher.number, AnswerMatcher.exact})
ONLINE_MATCHERS: tuple[str, ...] = tuple(matcher.value for matcher in AnswerMatcher if not matcher.offline_only)
# The default cutoff of `semantic`: chosen against true agreement on HumanEval's 80 cached answer pairs of the Qwen
# pair (the highest Youden's J, recall + specificity - 1, on a 0.01 grid) and reported on mathematics and a
# classification set asked as chat: docs/evaluation.md, "Matchers against truth" (bench/matchers_truth.py).
SEMANTIC_CUTOFF = 0.96
# For free text where agreement is rare as text: what the Calibrated condition suggests instead of exact.
FREE_TEXT_MATCHERS = (AnswerMatcher.judge, AnswerMatcher.semantic)


def _judges_online(matcher: AnswerMatcher) -> AnswerMatcher:
    if matcher.offline_only:
        raise ValueError(OFFLINE_ONLY_MATCHER.format(matcher=matcher.value))
    return matcher


# A matcher the router and a run's gate can judge with: the model refuses the offline-only ones, and the CRD lists
# only the others, so the API server refuses them too. Online calibration, a Distillation and its settings use it.
OnlineMatcher = Annotated[
    AnswerMatcher, AfterValidator(_judges_online), WithJsonSchema({"type": "string", "enum": list(ONLINE_MATCHERS)})
]


class Judge(SpecModel):
    """The LLM that judges agreement for `matcher: judge`: by default the cascade's last tier (deployed already).

    Asked whether the candidate answer is as correct and complete as the
    reference answer for the request (`kascade.calibration.judge`), its verdict
    is read from the logprobs of its first token as a probability. Judge calls
    are off the response path, bounded like shadow calls, paid for and counted
    apart (`judgeCalls`, `judgeCost`, `judgeFailures`); a failed one loses its
    sample and never blocks an answer.
    """

    url: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        pattern=r"^https?://",
        description="An OpenAI-compatible base URL (…/v1) to ask instead of the last tier; it must return logprobs.",
    )
    model: str | None = Field(
        default=None, min_length=1, max_length=253, description="The model to ask at url (needed with url)."
    )
    api_key_secret: SecretKeyRef | None = Field(default=None, description="Bearer key for url, from a Secret.")
    price: Price | None = Field(
        default=None, description="What a call to url costs (judgeCost); default: the last tier's price."
    )
    min_probability: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="The answers agree when the judge's probability of yes is at least this.",
    )
    concurrency: int = Field(
        default=4, ge=1, le=256, description="Judge calls in flight per router at most; beyond, a sample is skipped."
    )

    @model_validator(mode="after")
    def _names_a_model(self) -> Judge:
        # Restated in CEL in the CRD (`kascade.api.crd.JUDGE_RULES`).
        if (self.url is None) != (self.model is None):
            raise ValueError(JUDGE_URL_NEEDS_A_MODEL)
        return self

    @property
    def external(self) -> bool:
        """Whether it is an endpoint of its own rather than the cascade's last tier."""
        return self.url is not None
