"""Whether an answer is right, and whether two tiers' answers agree, for each kind of answer.

- label: the same class label (case and surrounding spaces ignored).
- code: the example's tests pass (`code_tests`, run in a separate process);
  two programs agree when they pass or fail the tests alike.
- number: the final number of a chat answer, normalised (integers, decimals,
  fractions, thousands separators: 1/2 == 0.5 == 0.50).
- exact: the same text once whitespace is collapsed.
- text: embedding similarity (the packaged MiniLM encoder, cosine of mean-pooled
  embeddings) at or above `TEXT_SIMILARITY_CUTOFF`.

Every figure of a report names the matcher that produced it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from kascade.evaluation.records import AnswerKind, Example, TierAnswer
from kascade.runtime.scoring.spans import final_code_block

TEXT_SIMILARITY_CUTOFF = 0.8
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*-?\d+)?|-?\.\d+")


def normalised_number(text: str) -> Fraction | None:
    """The final number in `text` as an exact fraction; None when it holds none.

    A `\\boxed{...}` or a line starting with "answer" is preferred to the last number anywhere.
    """
    boxed = re.findall(r"\\boxed\{([^}]*)\}", text)
    answer_lines = [line for line in text.splitlines() if re.match(r"\s*(final answer|answer)\b", line, re.I)]
    for source in (boxed[-1:] if boxed else []) + answer_lines[-1:] + [text]:
        found = _NUMBER.findall(source)
        if found:
            return _as_fraction(found[-1])
    return None


def _as_fraction(token: str) -> Fraction | None:
    cleaned = token.replace(",", "").replace(" ", "")
    try:
        if "/" in cleaned:
            top, bottom = cleaned.split("/")
            return Fraction(int(top), int(bottom)) if int(bottom) != 0 else None
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def _same_text(left: str, right: str) -> bool:
    return " ".join(left.split()) == " ".join(right.split())


def program_of(answer: str) -> str:
    """The code of an answer: its last code block's content, else the whole text."""
    found = final_code_block(answer)
    return answer[found[0] : found[1]] if found else answer


def answers_agree(kind: AnswerKind, answer: str, reference: str) -> bool:
    """Label, number and exact matching of two texts: pure, cheap, what online calibration uses in the router."""
    if kind is AnswerKind.label:
        return answer.strip().lower() == reference.strip().lower()
    if kind is AnswerKind.number:
        mine, theirs = normalised_number(answer), normalised_number(reference)
        return mine is not None and mine == theirs
    if kind is AnswerKind.exact:
        return _same_text(answer, reference)
    raise ValueError(f"{kind.value} answers are not compared by text alone")


class Matcher:
    """Correctness and agreement for one kind of answer; code and text need resources, made once here."""

    def __init__(self, kind: AnswerKind, *, cache_dir: Path | None = None, workers: int = 2) -> None:
        self.kind = kind
        self._cache_dir = cache_dir
        self._workers = workers
        self._encoder = None

    @property
    def name(self) -> str:
        detail = {
            AnswerKind.label: "same class label",
            AnswerKind.code: "the problem's tests pass (separate process, time and memory limits)",
            AnswerKind.number: "same final number (integers, decimals, fractions)",
            AnswerKind.exact: "same text, whitespace collapsed",
            AnswerKind.text: f"MiniLM embedding cosine >= {TEXT_SIMILARITY_CUTOFF}",
        }[self.kind]
        return f"{self.kind.value}: {detail}"

    def correct(self, examples: Sequence[Example], answers: Sequence[TierAnswer]) -> list[bool | None]:
        """Each answer judged against its example's reference; None where the example has none."""
        if self.kind is AnswerKind.code:
            from kascade.evaluation.code_tests import run_tests

            return run_tests(examples, [program_of(a.text) for a in answers], workers=self._workers)
        results: list[bool | None] = []
        for example, answer in zip(examples, answers, strict=True):
            reference = example.label if example.label is not None else example.answer
            results.append(
                None
                if reference is None
                else self._same(answer.text if answer.label is None else answer.label, reference)
            )
        if self.kind is AnswerKind.text:
            return self._similar_pairs(answers, [e.answer for e in examples], results)
        return results

    def agree(
        self,
        left: Sequence[TierAnswer],
        right: Sequence[TierAnswer],
        *,
        left_correct: Sequence[bool | None] = (),
        right_correct: Sequence[bool | None] = (),
    ) -> list[bool]:
        """Whether each pair of answers agrees; code compares test outcomes, which the caller passes."""
        if self.kind is AnswerKind.code:
            return [a == b for a, b in zip(left_correct, right_correct, strict=True)]
        if self.kind is AnswerKind.text:
            return [bool(x) for x in self._similar_pairs(left, [a.text for a in right], [False] * len(left))]
        return [self._same(a.label or a.text, b.label or b.text) for a, b in zip(left, right, strict=True)]

    def _same(self, answer: str, reference: str) -> bool:
        if self.kind in (AnswerKind.code, AnswerKind.text):
            return _same_text(answer, reference)  # the first guess; tests or embeddings decide after
        return answers_agree(self.kind, answer, reference)

    def _similar_pairs(
        self, answers: Sequence[TierAnswer], references: Sequence[str | None], fallback: list[bool | None]
    ) -> list[bool | None]:
        pairs = [(i, a.text, r) for i, (a, r) in enumerate(zip(answers, references, strict=True)) if r is not None]
        if not pairs:
            return fallback
        similarity = self._cosines([p[1] for p in pairs], [p[2] for p in pairs])  # type: ignore[misc]
        results = list(fallback)
        for (index, _, _), value in zip(pairs, similarity, strict=True):
            results[index] = value >= TEXT_SIMILARITY_CUTOFF
        return results

    def _cosines(self, left: Sequence[str], right: Sequence[str]) -> list[float]:
        import torch

        if self._encoder is None:
            from transformers import AutoModel, AutoTokenizer

            from kascade.evaluation.encoders import MINILM, encoder_folder
            from kascade.runtime.engines.transformers.loading import without_progress_bars

            folder = encoder_folder(MINILM, self._cache_dir)
            with without_progress_bars():
                self._encoder = (AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval())
        tokenizer, model = self._encoder

        def embed(texts: Sequence[str]) -> torch.Tensor:
            rows = []
            with torch.inference_mode():
                for start in range(0, len(texts), 32):
                    batch = tokenizer(
                        list(texts[start : start + 32]),
                        padding=True,
                        truncation=True,
                        max_length=256,
                        return_tensors="pt",
                    )
                    hidden = model(**batch).last_hidden_state
                    mask = batch["attention_mask"].unsqueeze(-1).float()
                    rows.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
            return torch.cat(rows)

        return (embed(left) * embed(right)).sum(-1).tolist()
