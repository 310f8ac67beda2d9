"""How a router judges whether a tier's answer agrees with the last tier's: one interface for every matcher.

Online calibration's samples and the escalation log's `agreed` label are
judged here, always off the response path (the caller has its answer before
any judging starts). The pure matchers (label, number, exact) decide at once;
`semantic` embeds both answers with the packaged encoder
(`kascade.runtime.online.semantic`), batched in a worker thread; `judge` asks an
LLM (`kascade.runtime.online.llm_judge`), bounded in concurrency, paid and
counted apart. A question that could not be judged (the encoder failed, the
judge was unreachable or answered no verdict) is None: the sample is lost and
counted, never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kascade.api.agreement import AnswerMatcher
from kascade.calibration.agreement import answers_agree


@dataclass(frozen=True)
class AgreementQuestion:
    """Does `answer` (a tier's) agree with `reference` (the last tier's) for the caller's request `body`?"""

    body: Mapping[str, Any]
    answer: str
    reference: str


class AgreementJudge(Protocol):
    """Judges questions; `None` for one it could not judge (counted by the judge, the sample lost)."""

    matcher: AnswerMatcher

    async def agree(self, questions: Sequence[AgreementQuestion]) -> list[bool | None]: ...

    async def close(self) -> None: ...


class TextMatch:
    """The pure matchers: two texts decide, at once."""

    def __init__(self, matcher: AnswerMatcher) -> None:
        if not matcher.pure:
            raise ValueError(f"matcher {matcher.value} is not decided by the two texts alone")
        self.matcher = matcher

    async def agree(self, questions: Sequence[AgreementQuestion]) -> list[bool | None]:
        return [answers_agree(self.matcher, q.answer, q.reference) for q in questions]

    async def close(self) -> None:
        return None
