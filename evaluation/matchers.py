"""Whether an answer is right, and whether two tiers' answers agree, for each kind of answer.

- label: the same class label (case and surrounding spaces ignored).
- code: the example's tests pass (`code_tests`, run in a separate process);
  two programs agree when they pass or fail the tests alike.
- number: the final number of a chat answer, normalised (integers, decimals,
  fractions, thousands separators: 1/2 == 0.5 == 0.50).
- exact: the same text once whitespace is collapsed.
- judge: an LLM judge (`judge_answers.AnswerJudge`: by default the last tier)
  says the answer is as correct and complete as the reference; a pair it
  could not judge is counted and reported, never counted as agreement.
- semantic: embedding similarity (the packaged MiniLM encoder on ONNX Runtime, the
  router's own: cosine of mean-pooled embeddings) at or above the cutoff
  (`semantic_cutoff`, by default `SEMANTIC_CUTOFF`).

Every figure of a report names the matcher that produced it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kascade.api.agreement import SEMANTIC_CUTOFF, AnswerMatcher
from kascade.calibration.agreement import answers_agree, same_text
from kascade.evaluation.records import Example, TierAnswer
from kascade.runtime.models.encoder import SentenceEncoder, ensure_onnx_encoder
from kascade.runtime.scoring.spans import final_code_block

if TYPE_CHECKING:
    from kascade.evaluation.judge_answers import AnswerJudge


def program_of(answer: str) -> str:
    """The code of an answer: its last code block's content, else the whole text."""
    found = final_code_block(answer)
    return answer[found[0] : found[1]] if found else answer


class Matcher:
    """Correctness and agreement for one kind of answer; code and text need resources, made once here."""

    def __init__(
        self,
        kind: AnswerMatcher,
        *,
        cache_dir: Path | None = None,
        workers: int = 2,
        semantic_cutoff: float = SEMANTIC_CUTOFF,
        judge: AnswerJudge | None = None,
    ) -> None:
        self.kind = kind
        self._judge = judge  # matcher judge: the LLM asked, its verdicts cached
        self._cache_dir = cache_dir
        self._workers = workers
        self.semantic_cutoff = semantic_cutoff  # matcher semantic: agreed at a cosine at least this
        self._encoder: SentenceEncoder | None = None  # the exported MiniLM, loaded at the first use

    @property
    def name(self) -> str:
        if self.kind is AnswerMatcher.judge:
            return f"judge: {self._judge.description if self._judge is not None else 'no judge given'}"
        detail = {
            AnswerMatcher.label: "same class label",
            AnswerMatcher.code: "the problem's tests pass (separate process, time and memory limits)",
            AnswerMatcher.number: "same final number (integers, decimals, fractions)",
            AnswerMatcher.exact: "same text, whitespace collapsed",
            AnswerMatcher.semantic: f"MiniLM embedding cosine >= {self.semantic_cutoff:g}",
        }[self.kind]
        return f"{self.kind.value}: {detail}"

    def correct(self, examples: Sequence[Example], answers: Sequence[TierAnswer]) -> list[bool | None]:
        """Each answer judged against its example's reference; None where the example has none."""
        if self.kind is AnswerMatcher.code:
            from kascade.evaluation.code_tests import run_tests

            return run_tests(examples, [program_of(a.text) for a in answers], workers=self._workers)
        if self.kind is AnswerMatcher.judge:
            return self._judged(examples, [a.text for a in answers], [e.answer or e.label for e in examples])
        results: list[bool | None] = []
        for example, answer in zip(examples, answers, strict=True):
            reference = example.label if example.label is not None else example.answer
            results.append(
                None
                if reference is None
                else self._same(answer.text if answer.label is None else answer.label, reference)
            )
        if self.kind is AnswerMatcher.semantic:
            return self._similar_pairs(answers, [e.answer for e in examples], results)
        return results

    def agree(
        self,
        left: Sequence[TierAnswer],
        right: Sequence[TierAnswer],
        *,
        left_correct: Sequence[bool | None] = (),
        right_correct: Sequence[bool | None] = (),
        examples: Sequence[Example] = (),
    ) -> list[bool]:
        """Whether each pair of answers agrees; code compares test outcomes, which the caller passes.

        The judge reads each pair's request from `examples`; a pair it could not judge is a disagreement.
        """
        if self.kind is AnswerMatcher.code:
            return [a == b for a, b in zip(left_correct, right_correct, strict=True)]
        if self.kind is AnswerMatcher.judge:
            return [bool(x) for x in self._judged(examples, [a.text for a in left], [b.text for b in right])]
        if self.kind is AnswerMatcher.semantic:
            return [bool(x) for x in self._similar_pairs(left, [a.text for a in right], [False] * len(left))]
        return [self._same(a.label or a.text, b.label or b.text) for a, b in zip(left, right, strict=True)]

    def _judged(
        self, examples: Sequence[Example], candidates: Sequence[str], references: Sequence[str | None]
    ) -> list[bool | None]:
        """The judge's verdict on each candidate against its reference; None: no reference. No verdict: False."""
        from kascade.evaluation.judge_answers import question_of

        if self._judge is None:
            raise ValueError("matcher judge needs a judge to ask (kascade.evaluation.judge_answers.judge_for)")
        if len(examples) != len(candidates):
            raise ValueError(f"matcher judge needs each pair's request: {len(examples)} for {len(candidates)} pairs")
        asked = [i for i, reference in enumerate(references) if reference is not None]
        questions = [question_of(examples[i], candidates[i], references[i] or "") for i in asked]
        results: list[bool | None] = [None] * len(candidates)
        for index, agreed in zip(asked, self._judge.agree(questions), strict=True):
            results[index] = bool(agreed)  # no verdict: never agreement (the judge counts it, the name reports it)
        return results

    def _same(self, answer: str, reference: str) -> bool:
        if self.kind in (AnswerMatcher.code, AnswerMatcher.semantic):
            return same_text(answer, reference)  # the first guess; tests or embeddings decide after
        return answers_agree(self.kind, answer, reference)

    def _similar_pairs(
        self, answers: Sequence[TierAnswer], references: Sequence[str | None], fallback: list[bool | None]
    ) -> list[bool | None]:
        pairs = [(i, a.text, r) for i, (a, r) in enumerate(zip(answers, references, strict=True)) if r is not None]
        if not pairs:
            return fallback
        similarity = self._cosines([p[1] for p in pairs], [p[2] for p in pairs])
        results = list(fallback)
        for (index, _, _), value in zip(pairs, similarity, strict=True):
            results[index] = value >= self.semantic_cutoff
        return results

    def _cosines(self, left: Sequence[str], right: Sequence[str]) -> list[float]:
        """The router's own encoder (ONNX Runtime), exported into the cache on first use."""
        if self._encoder is None:
            self._encoder = SentenceEncoder(ensure_onnx_encoder(self._cache_dir), threads=self._workers)
        return self._encoder.cosines(left, right)
