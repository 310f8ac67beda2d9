"""Matchers: numbers normalised, code judged by its tests in a separate process, labels and text."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from kascade.api.agreement import SEMANTIC_CUTOFF, AnswerMatcher
from kascade.calibration.agreement import normalised_number
from kascade.evaluation.code_tests import passes
from kascade.evaluation.matchers import Matcher, program_of
from kascade.evaluation.records import CodeTests, Example, TierAnswer


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("The answer is 1/2.", Fraction(1, 2)),
        ("0.50", Fraction(1, 2)),
        ("so x = -3", Fraction(-3)),
        ("1,234 apples", Fraction(1234)),
        ("first 3, then \\boxed{7} and 9", Fraction(7)),
        ("Step 1: 4+4=8\nAnswer: 12", Fraction(12)),
        ("none here", None),
    ],
)
def test_final_numbers_are_normalised(text: str, number: Fraction | None) -> None:
    assert normalised_number(text) == number


def _answer(text: str) -> TierAnswer:
    return TierAnswer(text=text)


def test_number_label_and_exact_matchers() -> None:
    examples = [Example(id="1", prompt="q", answer="0.5"), Example(id="2", prompt="q", answer="3")]
    numbers = Matcher(AnswerMatcher.number)
    assert numbers.correct(examples, [_answer("it is 1/2"), _answer("4")]) == [True, False]
    assert numbers.agree([_answer("2.0")], [_answer("2")]) == [True]
    labels = Matcher(AnswerMatcher.label)
    classified = [Example(id="1", input="x", label="Spam")]
    assert labels.correct(classified, [TierAnswer(text="spam", label="spam")]) == [True]
    assert Matcher(AnswerMatcher.exact).agree([_answer("a  b\n")], [_answer("a b")]) == [True]
    assert numbers.correct([Example(id="3", prompt="q")], [_answer("1")]) == [None]


PROBLEM = Example(
    id="add",
    messages=({"role": "user", "content": "add"},),
    tests=CodeTests(
        prompt='def add(a, b):\n    """Sum."""\n',
        test="def check(candidate):\n    assert candidate(2, 3) == 5\n",
        entry_point="add",
    ),
)


@pytest.mark.slow  # runs the code in a process
def test_code_passes_only_when_its_tests_do() -> None:
    assert passes(PROBLEM, "def add(a, b):\n    return a + b\n")
    assert not passes(PROBLEM, "def add(a, b):\n    return a - b\n")
    assert not passes(PROBLEM, "def add(a, b)\n")  # a syntax error
    assert (
        program_of("Sure:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.")
        == "def add(a, b):\n    return a + b\n"
    )


@pytest.mark.slow  # runs the code in a process
def test_code_runs_outside_this_process_with_limits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "written"
    escape = f"open({str(marker)!r}, 'w').write('x')\ndef add(a, b):\n    return a + b\n"
    assert passes(PROBLEM, escape)  # it ran, in its own process: this one's state is untouched
    assert marker.exists()
    assert not passes(PROBLEM, "def add(a, b):\n    while True:\n        pass\n")  # the time limit ends it
    assert not passes(PROBLEM, "x = bytearray(8 * 1024**3)\ndef add(a, b):\n    return a + b\n")  # the memory limit


@pytest.mark.slow  # runs the code in a process
def test_code_agreement_compares_test_outcomes() -> None:
    matcher = Matcher(AnswerMatcher.code)
    right = _answer("```python\ndef add(a, b):\n    return a + b\n```")
    wrong = _answer("```python\ndef add(a, b):\n    return 0\n```")
    outcomes = matcher.correct([PROBLEM, PROBLEM], [right, wrong])
    assert outcomes == [True, False]
    assert matcher.agree([right, wrong], [right, right], left_correct=outcomes, right_correct=[True, True]) == [
        True,
        False,
    ]


def _cache_with_encoder(tiny_encoder_onnx_dir: Path, cache: Path) -> Path:
    """A model cache holding the exported encoder, as `kascade eval` leaves it after its first semantic run."""
    import shutil

    from kascade.runtime.models.encoder import onnx_encoder_dir

    shutil.copytree(tiny_encoder_onnx_dir, onnx_encoder_dir(cache))
    return cache


@pytest.mark.slow  # loads a model
def test_semantic_agreement_is_the_routers_encoder_at_the_given_cutoff(
    tiny_encoder_onnx_dir: Path, tmp_path: Path
) -> None:
    from kascade.runtime.models.encoder import SentenceEncoder

    cache = _cache_with_encoder(tiny_encoder_onnx_dir, tmp_path)
    same, other = "The cat sat on the mat.", "def add(a, b):\n    return a + b"
    cosine = SentenceEncoder(tiny_encoder_onnx_dir).cosines([same], [other])[0]
    assert cosine < 0.999
    strict = Matcher(AnswerMatcher.semantic, cache_dir=cache, semantic_cutoff=0.999)
    loose = Matcher(AnswerMatcher.semantic, cache_dir=cache, semantic_cutoff=cosine - 1e-3)
    assert strict.agree([_answer(same), _answer(same)], [_answer(same), _answer(other)]) == [True, False]
    assert loose.agree([_answer(same)], [_answer(other)]) == [True]
    examples = [Example(id="1", prompt="q", answer=same), Example(id="2", prompt="q")]
    assert strict.correct(examples, [_answer(same), _answer(other)]) == [True, None]  # None: no reference
    assert strict.name == "semantic: MiniLM embedding cosine >= 0.999"
    assert Matcher(AnswerMatcher.semantic).semantic_cutoff == SEMANTIC_CUTOFF


@pytest.mark.slow  # loads models
def test_kascade_eval_matches_semantically(
    tiny_encoder_onnx_dir: Path, tiny_small_lm_dir: Path, tiny_large_lm_dir: Path, tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from kascade.cli import app

    cache = _cache_with_encoder(tiny_encoder_onnx_dir, tmp_path / "cache")
    manifest = tmp_path / "chat.yaml"
    tiers = "".join(
        f"    - name: {name}\n      model:\n        uri: {folder}\n      engine: transformers\n{accept}"
        for name, folder, accept in (
            ("small", tiny_small_lm_dir, "      accept:\n        method: quantile\n        threshold: 0.5\n"),
            ("large", tiny_large_lm_dir, ""),
        )
    )
    manifest.write_text(
        "apiVersion: kascade.dev/v1alpha1\nkind: ModelCascade\nmetadata:\n  name: tiny-chat\n"
        f"spec:\n  task: chat\n  tiers:\n{tiers}"
    )
    data = tmp_path / "chat.jsonl"
    data.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": f"count to {i}"}]}) + "\n" for i in range(12))
    )
    arguments = ["eval", "-f", str(manifest), "--data", str(data), "--match", "semantic", "--max-tokens", "4"]
    arguments += ["--splits", "2", "--cache-dir", str(cache), "--answers", str(tmp_path / "answers")]
    result = CliRunner().invoke(app, [*arguments, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"matcher — semantic: MiniLM embedding cosine >= {SEMANTIC_CUTOFF:g}" in result.output
