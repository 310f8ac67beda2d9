"""`kascade eval` and `kascade calibrate` end to end, on tiny local models and small JSONL sets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kascade.cli import app
from kascade.evaluation.answer_cache import AnswerFile
from kascade.evaluation.records import Example, TierAnswer
from kascade.runtime.local.manifest import load_manifest

runner = CliRunner()


def _manifest(path: Path, task: str, small: Path, large: Path, method: str, extra: str = "") -> Path:
    path.write_text(f"""\
apiVersion: kascade.dev/v1alpha1
kind: ModelCascade
metadata:
  name: tiny-{task}
spec:
  task: {task}
{extra}  tiers:
    # the small one answers first
    - name: small
      model:
        uri: {small}
      engine: transformers
      price: {{currency: USD, inputPerMillion: 0.1, outputPerMillion: 0.2}}
      accept:
        method: {method}
        threshold: 0.5
    - name: large
      model:
        uri: {large}
      engine: transformers
      price: {{currency: USD, inputPerMillion: 1, outputPerMillion: 2}}
""")
    return path


@pytest.fixture
def classify_case(tmp_path: Path, tiny_classifier_dir: Path) -> tuple[Path, Path]:
    from kascade.testing.tiny_models import build_tiny_classifier

    large = build_tiny_classifier(tmp_path / "large-classifier", seed=11)
    rng = random.Random(0)
    data = tmp_path / "labels.jsonl"
    data.write_text(
        "".join(
            json.dumps({"input": f"text {i} {rng.random():.3f}", "label": rng.choice(["negative", "positive"])}) + "\n"
            for i in range(160)
        )
    )
    return _manifest(tmp_path / "cascade.yaml", "classify", tiny_classifier_dir, large, "maxProb"), data


def test_eval_writes_the_table_report_and_plot_and_reruns_from_the_cache(
    classify_case: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, data = classify_case
    args = [
        "eval",
        "-f",
        str(manifest),
        "--data",
        str(data),
        "--splits",
        "10",
        "--goal",
        "minAgreement=0.6",
        "--answers",
        str(tmp_path / "answers"),
        "--out",
        str(tmp_path / "out"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "oracle (ceiling)" in result.output and "random (floor)" in result.output
    assert "matcher — label: same class label" in result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    methods = {m["method"] for m in report["methods"]}
    assert {"maxProb", "classMargin", "learned (cross-fitted)", "oracle (ceiling)", "random (floor)"} <= methods
    assert report["examples"] == 160 and report["goals"] == ["minAgreement=0.6"]
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    import kascade.runtime.engines.transformers.loading as loading

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached answer was asked again")

    monkeypatch.setattr(loading, "load_model", no_model)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output


def test_calibrate_reads_the_goal_from_the_manifest_and_writes_the_threshold(
    tmp_path: Path, tiny_classifier_dir: Path, classify_case: tuple[Path, Path]
) -> None:
    manifest, data = classify_case
    text = manifest.read_text().replace(
        "  tiers:", "  calibration:\n    minAgreement: 0.55\n    confidence: 0.9\n  tiers:", 1
    )
    manifest.write_text(text)
    result = runner.invoke(
        app, ["calibrate", "-f", str(manifest), "--data", str(data), "--write", "--answers", str(tmp_path / "answers")]
    )
    assert result.exit_code == 0, result.output
    assert "goal minAgreement=0.55 at 90% confidence" in result.output and "held out (" in result.output
    written = manifest.read_text()
    assert "# the small one answers first" in written and "Set by `kascade calibrate`" in written
    accept = load_manifest(manifest).spec.tiers[0].accept
    assert accept is not None and accept.threshold != 0.5

    learned = runner.invoke(
        app,
        [
            "calibrate",
            "-f",
            str(manifest),
            "--data",
            str(data),
            "--method",
            "learned",
            "--goal",
            "minAgreement=0.55",
            "--write",
            "--answers",
            str(tmp_path / "answers"),
        ],
    )
    assert learned.exit_code == 0, learned.output
    rule = load_manifest(manifest).spec.tiers[0].accept
    assert rule is not None and rule.method.value == "learned" and rule.learned is not None


def test_a_goal_out_of_reach_and_bad_input_end_with_a_message(classify_case: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, data = classify_case
    common = ["-f", str(manifest), "--data", str(data), "--answers", str(tmp_path / "answers")]
    out_of_reach = runner.invoke(app, ["calibrate", *common, "--goal", "minAgreement=0.999"])
    assert out_of_reach.exit_code == 1
    assert "too few to certify" in out_of_reach.output
    bad_goal = runner.invoke(app, ["calibrate", *common, "--goal", "quality=high"])
    assert bad_goal.exit_code == 2 and "unknown goal 'quality'" in bad_goal.output
    no_goal = runner.invoke(app, ["calibrate", *common])
    assert no_goal.exit_code == 2 and "no goal" in no_goal.output
    wrong_task = tmp_path / "chat.jsonl"
    wrong_task.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    mismatch = runner.invoke(app, ["eval", "-f", str(manifest), "--data", str(wrong_task)])
    assert mismatch.exit_code == 2 and "this cascade's task is classify" in mismatch.output
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"input": "a", "label": "x"}\n{"input": "b", "prompt": "c"}\n')
    refused = runner.invoke(app, ["eval", "-f", str(manifest), "--data", str(broken)])
    assert (
        refused.exit_code == 2
        and "broken.jsonl:2" in refused.output
        and "exactly one of messages, prompt or input" in refused.output
    )


def test_chat_eval_compares_every_span(tmp_path: Path, tiny_small_lm_dir: Path, tiny_large_lm_dir: Path) -> None:
    manifest = _manifest(tmp_path / "chat.yaml", "chat", tiny_small_lm_dir, tiny_large_lm_dir, "quantile")
    data = tmp_path / "chat.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"count to {i}"}], "answer": str(i)}) + "\n"
            for i in range(24)
        )
    )
    result = runner.invoke(
        app,
        [
            "eval",
            "-f",
            str(manifest),
            "--data",
            str(data),
            "--match",
            "exact",
            "--max-tokens",
            "4",
            "--splits",
            "5",
            "--answers",
            str(tmp_path / "answers"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    labels = {m["method"] for m in json.loads((tmp_path / "out" / "report.json").read_text())["methods"]}
    assert {
        "quantile(0.1)",
        "minToken@finalCodeBlock",
        "entropy@notCopied",
        "learned@finalLine (cross-fitted)",
    } <= labels


def test_a_run_cut_short_keeps_what_it_answered(tmp_path: Path) -> None:
    cache = AnswerFile(tmp_path, "m", "model-id", {"max_tokens": 4})
    examples = [Example(id=str(i), prompt=f"p{i}") for i in range(3)]
    cache.put_many([(examples[0], TierAnswer(text="a")), (examples[1], TierAnswer(text="b"))])
    with cache.path.open("a") as handle:
        handle.write('{"key": "cut sho')  # the process died mid-line
    reread = AnswerFile(tmp_path, "m", "model-id", {"max_tokens": 4})
    assert reread.get(examples[0]) == TierAnswer(text="a") and reread.get(examples[2]) is None
    assert (
        AnswerFile(tmp_path, "m", "model-id", {"max_tokens": 8}).get(examples[0]) is None
    )  # other settings, other file


def test_an_external_tier_is_asked_over_its_openai_api_with_logprobs(
    tmp_path: Path, tiny_small_lm_dir: Path, tiny_large_lm_dir: Path, start_shared_model_server
) -> None:  # type: ignore[no-untyped-def]
    server = start_shared_model_server(tiny_small_lm_dir, name="tiny-small")
    manifest = tmp_path / "external.yaml"
    manifest.write_text(f"""\
apiVersion: kascade.dev/v1alpha1
kind: ModelCascade
metadata: {{name: external}}
spec:
  tiers:
    - name: small
      model: {{uri: "{server.url}", servedName: tiny-small}}
      engine: external
      accept: {{method: entropy, threshold: 0.5}}
    - name: large
      model: {{uri: {tiny_large_lm_dir}}}
      engine: transformers
""")
    data = tmp_path / "chat.jsonl"
    data.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"}]}) + "\n" for i in range(6))
    )
    result = runner.invoke(
        app,
        [
            "eval",
            "-f",
            str(manifest),
            "--data",
            str(data),
            "--match",
            "exact",
            "--max-tokens",
            "3",
            "--span",
            "all",
            "--splits",
            "2",
            "--answers",
            str(tmp_path / "answers"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    cached = [
        json.loads(line)
        for f in (tmp_path / "answers").glob("tiny-small-*.jsonl")
        for line in f.read_text().splitlines()
    ]
    answers = [line["answer"] for line in cached if "answer" in line]
    assert len(answers) == 6 and all(len(a["top_logprobs"][0]) == 5 and a["tokens"] for a in answers)


def test_a_cascade_of_three_tiers_is_refused_with_a_reason(tmp_path: Path, classify_case: tuple[Path, Path]) -> None:
    manifest, data = classify_case
    text = manifest.read_text()
    middle = text[text.index("    - name: small") : text.index("    - name: large")].replace(
        "name: small", "name: middle"
    )
    manifest.write_text(text.replace("    - name: large", middle + "    - name: large"))
    result = runner.invoke(app, ["eval", "-f", str(manifest), "--data", str(data)])
    assert result.exit_code == 2 and "has 3 tiers" in result.output


def test_cached_only_reads_what_every_tier_has_answered_and_generates_nothing(
    classify_case: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, data = classify_case
    answers = tmp_path / "answers"
    first = tmp_path / "first.jsonl"
    first.write_text("".join(data.read_text().splitlines(keepends=True)[:40]))
    assert (
        runner.invoke(
            app,
            [
                "eval",
                "-f",
                str(manifest),
                "--data",
                str(first),
                "--splits",
                "2",
                "--answers",
                str(answers),
                "--out",
                str(tmp_path / "out"),
            ],
        ).exit_code
        == 0
    )
    import kascade.runtime.engines.transformers.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("generated")))
    result = runner.invoke(
        app,
        [
            "eval",
            "-f",
            str(manifest),
            "--data",
            str(data),
            "--cached-only",
            "--splits",
            "2",
            "--answers",
            str(answers),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "--cached-only: 40 of 160 examples have every tier's answer" in result.output
