"""Whether two answers agree, by the pure matchers (label, number, exact): cheap enough for a router.

Online calibration's shadow samples, the escalation log's `agreed`, the
promotion gate's held-out answers and `kascade eval`/`calibrate` all judge
with this one function; the offline-only matchers (code, text) live in
`kascade.evaluation.matchers`.
"""

from __future__ import annotations

import re
from fractions import Fraction

from kascade.api.agreement import AnswerMatcher

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


def same_text(left: str, right: str) -> bool:
    """The same text once whitespace is collapsed."""
    return " ".join(left.split()) == " ".join(right.split())


def answers_agree(matcher: AnswerMatcher, answer: str, reference: str) -> bool:
    """Label, number and exact matching of two texts; an offline-only matcher is refused (ValueError)."""
    if matcher is AnswerMatcher.label:
        return answer.strip().lower() == reference.strip().lower()
    if matcher is AnswerMatcher.number:
        mine, theirs = normalised_number(answer), normalised_number(reference)
        return mine is not None and mine == theirs
    if matcher is AnswerMatcher.exact:
        return same_text(answer, reference)
    raise ValueError(f"{matcher.value} answers are not compared by text alone (kascade.evaluation.matchers)")
