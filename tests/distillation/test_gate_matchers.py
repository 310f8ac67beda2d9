"""The gate judges held-out answers with every online matcher: semantic by an encoder, judge by an LLM on loopback.

A pair the matcher could not judge (a judge answering garbage, a judge out of reach, an encoder failing) is
counted, and the gate refuses when fewer than 90% of the held-out answers were judged, before or after.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kascade.api.agreement import AnswerMatcher
from kascade.api.distill_settings import JUDGE_NEEDS_AN_ENDPOINT, DistillSettings
from kascade.api.distillation import GateVerdict
from kascade.api.loop import Gate
from kascade.distillation.evaluate import answer_figures, judged_answers
from kascade.distillation.examples import DistillExample
from kascade.distillation.gate import MIN_JUDGED_SHARE, promotion_gate
from kascade.distillation.held_out_judge import HeldOutJudge, SemanticJudge, held_out_judge
from kascade.distillation.result import HeldOutFigures
from kascade.runtime.serving import BackgroundServer

GATE = Gate(min_agreement_gain=0.01, slice_tolerance=0.02, min_slice_examples=20)
HELD_OUT = [
    DistillExample(
        id=str(i), kind="chat", prompt=[{"role": "user", "content": f"Capital of France? ({i})"}], target="Paris."
    )
    for i in range(20)
]
BEFORE = ["Lyon."] * 12 + ["Paris, the capital."] * 8  # 8 of 20 say what the teacher says
AFTER = ["Lyon."] * 2 + ["It is Paris."] * 18  # 18 of 20
CANDIDATE = re.compile(r"Candidate answer:\n(.*?)\n\n", re.S)


def _settings(**given: object) -> DistillSettings:
    return DistillSettings.model_validate({"student": "s", "data": "d.jsonl", "out": "o", **given})


def _verdict_response(word: str) -> dict[str, object]:
    """A chat completion of one token with its top logprobs, as vLLM lays it out."""
    other = "no" if word == "yes" else "yes" if word == "no" else "maybe"
    top = [{"token": word, "logprob": -0.05}, {"token": other, "logprob": -3.0}]
    return {
        "id": "judge-1",
        "object": "chat.completion",
        "model": "judge",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": word},
                "logprobs": {"content": [{"token": word, "logprob": -0.05, "top_logprobs": top}]},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41},
    }


def _judge_app(garbage: bool) -> Starlette:
    """Says yes when the candidate names Paris (the teacher's answer), no otherwise; or answers garbage."""

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        found = CANDIDATE.search(body["messages"][-1]["content"])
        candidate = found.group(1) if found else ""
        word = "Hello" if garbage else "yes" if "Paris" in candidate else "no"
        return JSONResponse(_verdict_response(word))

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture
def judge_server() -> Iterator[str]:
    with BackgroundServer(_judge_app(garbage=False)) as server:
        yield f"{server.url}/v1"


@pytest.fixture
def garbage_judge_server() -> Iterator[str]:
    with BackgroundServer(_judge_app(garbage=True)) as server:
        yield f"{server.url}/v1"


def _verdict_of(judge: HeldOutJudge | AnswerMatcher) -> tuple[HeldOutFigures, HeldOutFigures, GateVerdict]:
    before = answer_figures(*judged_answers(judge, BEFORE, HELD_OUT), [2] * len(HELD_OUT))
    after = answer_figures(*judged_answers(judge, AFTER, HELD_OUT), [2] * len(HELD_OUT))
    return before, after, promotion_gate(before, after, GATE)


@pytest.mark.slow
def test_an_llm_judge_on_loopback_judges_answers_in_other_words_and_the_gate_passes_on_its_verdicts(
    judge_server: str,
) -> None:
    settings = _settings(matcher="judge", judge_url=judge_server, judge_model="judge")
    before, after, verdict = _verdict_of(held_out_judge(settings))
    assert before.answer_agreement == 8 / 20 and after.answer_agreement == 18 / 20
    assert after.answers_unjudged == 0
    assert verdict.passed and verdict.gain is not None and abs(verdict.gain - 0.5) < 1e-12
    # Judged as text, no answer says exactly what the teacher said: nothing gained, the gate fails.
    assert not promotion_gate(*_verdict_of(AnswerMatcher.exact)[:2], GATE).passed


@pytest.mark.slow
def test_a_judge_answering_garbage_is_counted_and_the_gate_refuses_to_promote(garbage_judge_server: str) -> None:
    settings = _settings(matcher="judge", judge_url=garbage_judge_server, judge_model="judge")
    before, after, verdict = _verdict_of(held_out_judge(settings))
    assert after.answers_unjudged == 20 and before.answers_judged == 0
    assert not verdict.passed and verdict.gain is None
    assert verdict.reasons == [
        f"the matcher judged 0 of 20 held-out answers {moment} training (20 unjudged); "
        f"the gate needs at least {MIN_JUDGED_SHARE:.0%} judged"
        for moment in ("before", "after")
    ]


@pytest.mark.slow
def test_a_judge_out_of_reach_leaves_every_answer_unjudged_and_the_gate_refuses() -> None:
    from kascade.runtime.serving import free_port

    settings = _settings(matcher="judge", judge_url=f"http://127.0.0.1:{free_port()}/v1", judge_model="judge")
    said: list[str] = []
    _, after, verdict = _verdict_of(held_out_judge(settings, say=said.append))
    assert after.answers_unjudged == 20 and not verdict.passed
    assert said and "could not be reached" in said[0]


class _WordOverlap:
    """A stand-in encoder: the cosine is 1 when the answers share a word, else 0."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on = fail_on

    def cosines(self, left: Sequence[str], right: Sequence[str]) -> list[float]:
        if self.fail_on is not None and any(self.fail_on in text for text in left):
            raise RuntimeError("the encoder ran out of memory")
        words = [(set(re.findall(r"\w+", a)), set(re.findall(r"\w+", b))) for a, b in zip(left, right, strict=True)]
        return [1.0 if a & b else 0.0 for a, b in words]


def test_the_semantic_matcher_judges_by_the_encoders_cosine_at_the_cutoff() -> None:
    before, after, verdict = _verdict_of(SemanticJudge(_WordOverlap(), cutoff=0.8))
    assert before.answer_agreement == 8 / 20 and after.answer_agreement == 18 / 20
    assert verdict.passed
    said: list[str] = []
    failing = SemanticJudge(_WordOverlap(fail_on="It is"), cutoff=0.8, say=said.append)
    _, after, verdict = _verdict_of(failing)
    assert after.answers_unjudged == 20 and not verdict.passed and "out of memory" in said[0]


def test_a_run_judged_by_an_llm_needs_one_to_ask() -> None:
    with pytest.raises(ValueError, match=re.escape(JUDGE_NEEDS_AN_ENDPOINT)):
        _settings(matcher="judge")
    teacher_server = _settings(matcher="judge", teacher_url="http://t/v1", teacher_model="t")
    assert teacher_server.judge_endpoint == ("http://t/v1", "t")
    own = _settings(
        matcher="judge", teacher_url="http://t/v1", teacher_model="t", judge_url="http://j/v1", judge_model="j"
    )
    assert own.judge_endpoint == ("http://j/v1", "j")
    with pytest.raises(ValueError, match="--judge-url needs --judge-model"):
        _settings(judge_url="http://j/v1")


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny BERT exported to ONNX as the packaged MiniLM is (the router's `SentenceEncoder` runs it)."""
    from kascade.runtime.models.encoder import export_encoder
    from kascade.testing.tiny_models import build_tiny_sentence_encoder

    source = build_tiny_sentence_encoder(tmp_path_factory.mktemp("tiny-encoder"), seed=3)
    return export_encoder(source, tmp_path_factory.mktemp("tiny-encoder-onnx") / "onnx")


def test_the_run_judges_semantic_with_the_exported_encoder_it_is_given(tiny_encoder_dir: Path) -> None:
    pytest.importorskip("onnxruntime")
    settings = _settings(matcher="semantic", semantic_encoder=str(tiny_encoder_dir), semantic_cutoff=0.9999)
    judge = held_out_judge(settings)
    held_out = HELD_OUT[:2]
    same, right = judged_answers(judge, ["Paris.", "Lyon, in the south of France."], held_out)
    assert same == [True, False] and right == []  # the same text has cosine 1; another is below the cutoff
    loose = held_out_judge(settings.model_copy(update={"semantic_cutoff": 0.0001}))
    assert judged_answers(loose, ["Paris.", "Paris!"], held_out)[0] == [True, True]


@pytest.mark.slow
def test_a_run_judged_by_a_judge_answering_garbage_counts_it_and_its_gate_refuses(
    garbage_judge_server: str, tiny_small_lm_dir: Path, tmp_path: Path, answers_file: Callable[[int], Path]
) -> None:
    from typer.testing import CliRunner

    from kascade.cli import app
    from kascade.distillation.result import DistillResult

    out = tmp_path / "student"
    args = ["--student", str(tiny_small_lm_dir), "--data", str(answers_file(12)), "--out", str(out)]
    args += ["--steps", "2", "--batch-size", "4", "--eval-generate", "3", "--max-new-tokens", "3", "--held-out", "0.5"]
    args += ["--match", "judge", "--judge-url", garbage_judge_server, "--judge-model", "judge"]
    result = CliRunner().invoke(app, ["distill", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    provenance = DistillResult.model_validate_json((out / "provenance.json").read_text())
    judged = provenance.after.answers_generated
    assert judged and provenance.after.answers_unjudged == judged and provenance.before.answers_unjudged == judged
    assert not provenance.gate.passed and provenance.gate.reasons[0].startswith(f"the matcher judged 0 of {judged}")
    assert "promotion gate: failed" in result.output
