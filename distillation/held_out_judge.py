"""The run's matcher as the gate asks it: does a held-out answer agree with the teacher's? Yes, no, or unjudged.

- label, number, exact: the two texts decide at once (`kascade.calibration.agreement`);
- semantic: the packaged encoder (`kascade.runtime.models.encoder`, ONNX) embeds both answers, and they agree
  when the cosine is at least the run's `semantic_cutoff`;
- judge: an LLM asked the one question of `kascade.calibration.judge`, its verdict read from its first token
  (`kascade.evaluation.judge_answers`, the judge `kascade eval` asks): `--judge-url`/`--judge-model`, else the
  teacher server (the cascade's last tier), else the teacher in process.

A pair that could not be judged (a judge with no verdict, a judge that could not be reached, an encoder that
failed) is None: the gate counts it and never guesses (`kascade.distillation.gate`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from kascade.api.agreement import AnswerMatcher
from kascade.api.distill_settings import JUDGE_API_KEY_ENV, DistillSettings
from kascade.calibration.agreement import answers_agree
from kascade.runtime.online.agreement import AgreementQuestion


class HeldOutJudge(Protocol):
    """Judges held-out questions; None for one it could not judge."""

    def agree(self, questions: Sequence[AgreementQuestion]) -> list[bool | None]: ...


def request_body(kind: str, prompt: Any) -> Mapping[str, Any]:
    """A held-out example's prompt as the request the judge reads: a chat's messages, or a prompt."""
    return {"messages": prompt} if kind == "chat" else {"prompt": prompt}


class TextJudge:
    """label, number, exact: the two texts decide."""

    def __init__(self, matcher: AnswerMatcher) -> None:
        if not matcher.pure:
            raise ValueError(f"matcher {matcher.value} is not decided by the two texts alone")
        self.matcher = matcher

    def agree(self, questions: Sequence[AgreementQuestion]) -> list[bool | None]:
        return [answers_agree(self.matcher, q.answer, q.reference) for q in questions]


class Cosines(Protocol):
    def cosines(self, left: Sequence[str], right: Sequence[str]) -> Sequence[float]: ...


class SemanticJudge:
    """Two answers agree when their embeddings' cosine is at least `cutoff`; all unjudged when the encoder fails."""

    def __init__(self, encoder: Cosines, cutoff: float, say: Callable[[str], None] = print) -> None:
        self.encoder = encoder
        self.cutoff = cutoff
        self.say = say

    def agree(self, questions: Sequence[AgreementQuestion]) -> list[bool | None]:
        if not questions:
            return []
        try:
            cosines = list(self.encoder.cosines([q.answer for q in questions], [q.reference for q in questions]))
        except Exception as error:  # noqa: BLE001 - an encoder that fails leaves the pairs unjudged, counted
            self.say(f"the encoder could not embed {len(questions)} held-out answers: {error}")
            return [None] * len(questions)
        if len(cosines) != len(questions):
            self.say(f"the encoder gave {len(cosines)} cosines for {len(questions)} held-out answers")
            return [None] * len(questions)
        return [cosine >= self.cutoff for cosine in cosines]


class LlmJudge:
    """An LLM judge (`AnswerJudge` of `kascade eval`); a judge that cannot be asked leaves the pairs unjudged."""

    def __init__(self, judge: Any, say: Callable[[str], None] = print) -> None:
        self.judge = judge
        self.say = say

    def agree(self, questions: Sequence[AgreementQuestion]) -> list[bool | None]:
        from kascade.evaluation.judge_answers import JudgeError

        try:
            agreed: list[bool | None] = self.judge.agree(questions)
        except JudgeError as error:
            self.say(f"the judge could not judge {len(questions)} held-out answers: {error}")
            return [None] * len(questions)
        return agreed


def held_out_judge(settings: DistillSettings, say: Callable[[str], None] = print) -> HeldOutJudge:
    """The run's matcher, ready to judge (the encoder loaded, the judge named)."""
    matcher = settings.matcher
    if matcher.pure:
        return TextJudge(matcher)
    if matcher is AnswerMatcher.semantic:
        from kascade.runtime.models.encoder import SentenceEncoder

        return SemanticJudge(SentenceEncoder(encoder_folder(settings)), settings.semantic_cutoff, say)
    if matcher is AnswerMatcher.judge:
        return LlmJudge(_answer_judge(settings), say)
    raise ValueError(f"matcher {matcher.value} cannot judge a run's held-out answers")


def encoder_folder(settings: DistillSettings) -> Path:
    """The exported encoder: `semantic_encoder`, else the runtime image's, else the cache's (exported on first use)."""
    from kascade.runtime.models.encoder import IMAGE_ENCODER_DIR, ensure_onnx_encoder, is_exported

    if settings.semantic_encoder is not None:
        return Path(settings.semantic_encoder)
    return Path(IMAGE_ENCODER_DIR) if is_exported(Path(IMAGE_ENCODER_DIR)) else ensure_onnx_encoder()


def _answer_judge(settings: DistillSettings) -> Any:
    from kascade.evaluation.judge_answers import AnswerJudge, EndpointJudge, InProcessJudge

    source: Any
    if (endpoint := settings.judge_endpoint) is not None:
        url, model = endpoint
        key = os.environ.get(JUDGE_API_KEY_ENV if settings.judge_url is not None else "KASCADE_TEACHER_API_KEY")
        source = EndpointJudge(url, model, api_key=key, concurrency=settings.judge_concurrency)
    else:
        from kascade.runtime.models.files import resolve_model_uri

        assert settings.teacher is not None, "the settings refuse matcher judge with nothing to ask"
        source = InProcessJudge(resolve_model_uri(settings.teacher), settings.teacher)
    return AnswerJudge(source, min_probability=settings.judge_min_probability)
