"""The offline judge: verdicts cached and counted, endpoints read and refused, a tiny model's batched prefill."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from kascade.api.agreement import AnswerMatcher
from kascade.calibration.judge import judge_messages
from kascade.evaluation.judge_answers import (
    AnswerJudge,
    EndpointJudge,
    InProcessJudge,
    JudgeError,
    Verdict,
    endpoint_verdict,
    question_of,
)
from kascade.evaluation.matchers import Matcher
from kascade.evaluation.records import Example, TierAnswer
from kascade.runtime.online.agreement import AgreementQuestion


class ScriptedJudge:
    """Says yes with P 0.9 when the two answers share their first word, no verdict on "garbage", else P 0.1."""

    identity = "scripted"

    def __init__(self) -> None:
        self.asked: list[AgreementQuestion] = []

    def judge(self, questions: Sequence[AgreementQuestion]) -> list[Verdict]:
        self.asked += questions
        found = []
        for q in questions:
            if q.answer == "garbage":
                found.append(Verdict(None, prompt_tokens=7))
            else:
                same = q.answer.split()[:1] == q.reference.split()[:1]
                found.append(Verdict(0.9 if same else 0.1, prompt_tokens=7))
        return found


def _chat(id_: str, text: str = "q") -> Example:
    return Example(id=id_, messages=({"role": "user", "content": text},))


def test_verdicts_are_cached_so_a_rerun_asks_nothing(tmp_path: Path) -> None:
    questions = [
        AgreementQuestion({"prompt": "q"}, "Paris it is", "Paris France"),
        AgreementQuestion({"prompt": "q"}, "a", "b"),
    ]
    first_source = ScriptedJudge()
    first = AnswerJudge(first_source, verdicts_dir=tmp_path, batch_size=1)
    assert first.agree(questions) == [True, False]
    assert len(first_source.asked) == 2 and first.new_calls == 2
    again_source = ScriptedJudge()
    again = AnswerJudge(again_source, verdicts_dir=tmp_path)
    assert again.agree(questions) == [True, False]
    assert again_source.asked == [] and again.new_calls == 0
    assert again.prompt_tokens == 14
    # Another question (a changed reference) is a new key.
    assert again.agree([AgreementQuestion({"prompt": "q"}, "a", "a")]) == [True]
    assert len(again_source.asked) == 1


def test_no_verdict_is_counted_reported_and_never_agreement() -> None:
    judge = AnswerJudge(ScriptedJudge())
    matcher = Matcher(AnswerMatcher.judge, judge=judge)
    examples = [_chat("1"), _chat("2"), _chat("3")]
    small = [TierAnswer(text="yes sir"), TierAnswer(text="garbage"), TierAnswer(text="no")]
    last = [TierAnswer(text="yes"), TierAnswer(text="garbage"), TierAnswer(text="maybe")]
    assert matcher.agree(small, last, examples=examples) == [True, False, False]
    assert judge.unjudged == 1 and judge.asked == 3
    assert "1 of 3 pairs had no verdict (counted as disagreement)" in matcher.name


def test_the_judge_needs_each_pairs_request_and_a_judge() -> None:
    answers = [TierAnswer(text="a")]
    with pytest.raises(ValueError, match="request"):
        Matcher(AnswerMatcher.judge, judge=AnswerJudge(ScriptedJudge())).agree(answers, answers)
    with pytest.raises(ValueError, match="needs a judge"):
        Matcher(AnswerMatcher.judge).agree(answers, answers, examples=[_chat("1")])


def test_correctness_is_judged_against_the_reference_where_there_is_one() -> None:
    source = ScriptedJudge()
    matcher = Matcher(AnswerMatcher.judge, judge=AnswerJudge(source))
    examples = [Example(id="1", prompt="2+2?", answer="4"), Example(id="2", prompt="free")]
    assert matcher.correct(examples, [TierAnswer(text="4 exactly"), TierAnswer(text="x")]) == [True, None]
    assert [q.reference for q in source.asked] == ["4"]
    assert source.asked[0].body == {"prompt": "2+2?"}


def test_the_question_holds_the_request_both_answers_and_nothing_else() -> None:
    question = question_of(_chat("1", "What is the capital of France?"), "Paris.", "It is Paris.")
    assert question.body == {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
    text = judge_messages("user: What is the capital of France?", "Paris.", "It is Paris.")[1]["content"]
    assert "Reference answer:\nIt is Paris." in text and "Candidate answer:\nParis." in text


def _response(tops: list[tuple[str, float]], chosen: tuple[str, float] | None = None) -> dict[str, Any]:
    token, logprob = chosen or tops[0]
    entry = {"token": token, "logprob": logprob, "top_logprobs": [{"token": t, "logprob": lp} for t, lp in tops]}
    return {
        "choices": [{"message": {"content": token}, "logprobs": {"content": [entry]}}],
        "usage": {"prompt_tokens": 50},
    }


def test_an_endpoints_first_token_alternatives_are_the_verdict() -> None:
    found = endpoint_verdict(_response([("Yes", math.log(0.6)), (" yes", math.log(0.1)), ("No", math.log(0.3))]))
    assert found.probability == pytest.approx(0.7) and found.prompt_tokens == 50
    assert endpoint_verdict(_response([("Maybe", -0.1), ("Perhaps", -3.0)])).probability is None
    assert endpoint_verdict({"choices": [{"message": {"content": "yes"}}]}).probability is None  # no logprobs
    assert endpoint_verdict({"garbage": True}).probability is None
    assert endpoint_verdict([1, 2]).probability is None


def test_an_endpoint_that_cannot_be_asked_stops_the_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: Any, **kwargs: Any) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(httpx, "post", unreachable)
    judge = EndpointJudge("http://judge.invalid/v1", "j")
    with pytest.raises(JudgeError, match="could not be reached"):
        judge.judge([AgreementQuestion({"prompt": "q"}, "a", "b")])

    monkeypatch.setattr(httpx, "post", lambda *a, **k: httpx.Response(503, text="overloaded"))
    with pytest.raises(JudgeError, match="503"):
        judge.judge([AgreementQuestion({"prompt": "q"}, "a", "b")])


def test_an_endpoint_is_asked_the_judge_body(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    def post(url: str, *, json: dict[str, Any], headers: dict[str, str], timeout: float) -> httpx.Response:
        sent.append({"url": url, "body": json, "headers": headers})
        return httpx.Response(200, json=_response([("no", -0.05), ("yes", -3.0)]))

    monkeypatch.setattr(httpx, "post", post)
    judge = EndpointJudge("http://judge.example/v1/", "grader", api_key="k")
    (found,) = judge.judge([AgreementQuestion({"prompt": "q"}, "a", "b")])
    assert found.probability is not None and found.probability < 0.1
    assert sent[0]["url"] == "http://judge.example/v1/chat/completions"
    assert sent[0]["body"]["max_tokens"] == 1 and sent[0]["body"]["logprobs"] is True
    assert sent[0]["headers"] == {"Authorization": "Bearer k"}


def test_a_tiny_models_batched_prefill_reads_each_prompt_as_alone(tiny_large_lm_dir: Path) -> None:
    judge = InProcessJudge(tiny_large_lm_dir, "tiny")
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16]]
    together = judge.first_token_alternatives(prompts)
    for prompt, batched in zip(prompts, together, strict=True):
        (alone,) = judge.first_token_alternatives([prompt])
        assert batched.keys() == alone.keys()
        assert all(batched[k] == pytest.approx(alone[k], abs=1e-4) for k in alone)
    questions = [AgreementQuestion({"prompt": "q"}, "a", "b"), AgreementQuestion({"prompt": "longer q"}, "c", "d")]
    verdicts = judge.judge(questions)
    assert len(verdicts) == 2 and all(v.prompt_tokens > 0 for v in verdicts)
    # A random model rarely says yes or no: whatever it says is a probability in [0, 1] or no verdict.
    assert all(v.probability is None or 0 <= v.probability <= 1 for v in verdicts)


def test_eval_judges_with_the_last_tier_and_a_rerun_asks_it_nothing(
    tmp_path: Path, tiny_small_lm_dir: Path, tiny_large_lm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from kascade.cli import app

    manifest = tmp_path / "chat.yaml"
    tiers = "".join(
        f"    - name: {name}\n      model: {{uri: {folder}}}\n      engine: transformers\n"
        f"      price: {{currency: USD, inputPerMillion: {price}, outputPerMillion: {price}}}\n"
        + ("      accept: {method: quantile, threshold: 0.5}\n" if name == "small" else "")
        for name, folder, price in (("small", tiny_small_lm_dir, 0.1), ("large", tiny_large_lm_dir, 1))
    )
    manifest.write_text(
        "apiVersion: kascade.dev/v1alpha1\nkind: ModelCascade\nmetadata: {name: tiny-judged}\n"
        f"spec:\n  task: chat\n  tiers:\n{tiers}"
    )
    data = tmp_path / "chat.jsonl"
    data.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": f"say {i}"}]}) + "\n" for i in range(12))
    )
    command = ["eval", "-f", str(manifest), "--data", str(data), "--match", "judge", "--max-tokens", "3"]
    command += ["--splits", "3", "--answers", str(tmp_path / "answers"), "--out", str(tmp_path / "out")]
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 0, first.output
    matcher = json.loads((tmp_path / "out" / "report.json").read_text())["matcher"]
    assert matcher.startswith("judge: ") and "of 12 pairs had no verdict" in matcher
    assert len(list((tmp_path / "answers").glob("judge-*.jsonl"))) == 1

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rerun loads no model: answers and verdicts are cached")

    monkeypatch.setattr("kascade.runtime.engines.transformers.loading.load_model", no_model)
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["matcher"] == matcher
