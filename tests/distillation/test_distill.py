"""`kascade distill` end to end on tiny models: a log written by a real local-mode run, then a student."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kascade.cli import app
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.engines.transformers import TransformersEngine


@pytest.fixture(scope="module")
def escalation_log(
    tmp_path_factory: pytest.TempPathFactory, tiny_small_lm_dir: Path, tiny_large_lm_dir: Path, prompts: list[str]
) -> Path:
    """36 escalations kept by local mode (`kascade up`'s cascade, tiers in process) with the log on; threshold 1."""
    import io

    from openai import OpenAI
    from rich.console import Console

    from kascade.api.modelcascade import ModelCascade
    from kascade.runtime.local.tiers import serve_cascade
    from kascade.runtime.serving import free_port

    folder = tmp_path_factory.mktemp("escalation-log")
    tiers = [
        {"name": name, "engine": "transformers", "model": {"uri": str(path)}, "price": {"inputPerMillion": 1.0}}
        for name, path in (("small", tiny_small_lm_dir), ("large", tiny_large_lm_dir))
    ]
    tiers[0]["accept"] = {"method": "geometricMean", "threshold": 1.0}
    cascade = ModelCascade.model_validate(
        {
            "apiVersion": "kascade.dev/v1alpha1",
            "kind": "ModelCascade",
            "metadata": {"name": "tiny"},
            "spec": {"tiers": tiers, "escalationLog": {"enabled": True, "uri": str(folder), "topLogprobs": 8}},
        }
    )
    console = Console(file=io.StringIO())
    with serve_cascade(cascade, host="127.0.0.1", port=free_port(), cache_dir=folder.parent, console=console) as router:
        client = OpenAI(base_url=f"{router.url}/v1", api_key="none")
        for prompt in prompts:
            answer = client.chat.completions.with_raw_response.create(
                model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=6, temperature=0
            )
            assert answer.headers["x-kascade-escalated"] == "true"
    return folder


def _distill(*args: str) -> Any:
    return CliRunner().invoke(app, ["distill", *args], env={"COLUMNS": "200"})


def test_a_student_distilled_from_the_log_learns_the_teachers_tokens_and_serves_as_it_is(
    escalation_log: Path, tiny_small_lm_dir: Path, tmp_path: Path, prompts: list[str]
) -> None:
    out = tmp_path / "student"
    result = _distill(
        "--student",
        str(tiny_small_lm_dir),
        "--data",
        str(escalation_log),
        "--out",
        str(out),
        "--steps",
        "40",
        "--batch-size",
        "6",
        "--eval-every",
        "20",
        "--eval-generate",
        "3",
        "--held-out",
        "0.25",
        "--learning-rate",
        "1e-2",
        "--max-new-tokens",
        "6",
        "--no-lora",
    )
    assert result.exit_code == 0, result.output
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["data"]["levels"] == {"token level (log)": provenance["data"]["train"]}
    assert provenance["data"]["train"] + provenance["data"]["held_out"] == len(prompts)
    first, last = provenance["loss_start_end"]
    assert last < 0.5 * first  # it learns the teacher's distribution on what it trains on
    assert provenance["after"]["step"] == 40 and {"token_agreement", "answer_agreement"} <= set(provenance["before"])
    assert "answer_agreement" in result.output and "before" in result.output
    # The folder is a model a tier serves as it is.
    engine = TransformersEngine.load(out, served_model_name="distilled", device="cpu")
    import asyncio

    answer = asyncio.run(engine.call(Endpoint.chat, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}))
    assert answer["model"] == "distilled" and answer["usage"]["completion_tokens"] >= 1
    asyncio.run(engine.aclose())


def test_an_interrupted_run_resumes_from_its_checkpoint_and_a_changed_run_is_refused(
    escalation_log: Path, tiny_small_lm_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "student"
    common = [
        "--student",
        str(tiny_small_lm_dir),
        "--data",
        str(escalation_log),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--eval-every",
        "5",
        "--eval-generate",
        "0",
        "--no-lora",
    ]
    assert _distill(*common, "--steps", "5").exit_code == 0
    resumed = _distill(*common, "--steps", "10")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming at step 5 of 10" in resumed.output
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["steps"] == 10 and [h["step"] for h in provenance["history"]] == [5, 10]
    assert len(provenance["history"]) == 2
    changed = _distill(*common, "--steps", "12", "--temperature", "4")
    assert changed.exit_code == 2 and "other settings" in changed.output


def test_sequence_level_when_the_ids_do_not_spell_the_answer_and_the_teacher_in_process_fills_in(
    tiny_small_lm_dir: Path, tiny_large_lm_dir: Path, tmp_path: Path, answers_file: Callable[[int], Path]
) -> None:
    data = answers_file(12)
    alone = _distill(
        "--student",
        str(tiny_small_lm_dir),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "a"),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-generate",
        "0",
        "--held-out",
        "0.2",
    )
    assert alone.exit_code == 0, alone.output
    assert "sequence level" in json.dumps(json.loads((tmp_path / "a" / "provenance.json").read_text())["data"])
    taught = _distill(
        "--student",
        str(tiny_small_lm_dir),
        "--teacher",
        str(tiny_large_lm_dir),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "b"),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--eval-generate",
        "0",
        "--held-out",
        "0.2",
        "--on-policy-fraction",
        "0.5",
        "--max-new-tokens",
        "4",
    )
    assert taught.exit_code == 0, taught.output
    levels = json.loads((tmp_path / "b" / "provenance.json").read_text())["data"]["levels"]
    assert set(levels) == {"token level (teacher in process)"}
    assert (tmp_path / "b" / "teacher-signal.jsonl").read_text().count("\n") == 12  # scored once, kept


def test_a_students_config_reads_the_same_rope_in_transformers_4_and_5(
    tiny_small_lm_dir: Path, tmp_path: Path, answers_file: Callable[[int], Path]
) -> None:
    """Transformers 5 saves only `rope_parameters`; transformers 4 (older vLLM images) would read rope_theta 10000."""
    import shutil

    from transformers import AutoConfig

    student = tmp_path / "scaled"
    shutil.copytree(tiny_small_lm_dir, student)
    config_file = student / "config.json"
    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0}
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "rope_parameters": rope}))
    out = tmp_path / "out"
    result = _distill(
        "--student",
        str(student),
        "--data",
        str(answers_file(8)),
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-generate",
        "0",
        "--held-out",
        "0.25",
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    # transformers 5's spelling, as the student had it; transformers 4's, with the same values.
    assert saved["rope_parameters"] == rope
    assert saved["rope_theta"] == rope["rope_theta"]
    assert saved["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert AutoConfig.from_pretrained(out).rope_parameters == rope


def test_a_default_rope_config_gets_rope_theta_and_no_rope_scaling() -> None:
    """Transformers 4 spells the default rope type as no rope_scaling at all."""
    from kascade.distillation.run import with_legacy_rope

    config = {"model_type": "llama", "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    assert with_legacy_rope(config) == {**config, "rope_theta": 1e6}
    per_layer_type = {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6}}}
    assert with_legacy_rope(per_layer_type) == per_layer_type  # no transformers 4 spelling: left as it is


def test_bad_input_is_refused_with_the_reason(tiny_small_lm_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"prompt": "no answer"}\n')
    result = _distill(
        "--student", str(tiny_small_lm_dir), "--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o")
    )
    assert result.exit_code == 2 and "bad.jsonl:1: a line needs an `answer`" in result.output
    no_teacher = _distill(
        "--student",
        str(tiny_small_lm_dir),
        "--data",
        str(tmp_path / "bad.jsonl"),
        "--out",
        str(tmp_path / "o"),
        "--on-policy-fraction",
        "0.5",
    )
    assert no_teacher.exit_code != 0 and "need a teacher to score" in no_teacher.output


def test_a_classifier_student_learns_from_soft_targets_of_a_classifier_teacher(
    tiny_classifier_dir: Path, tmp_path: Path
) -> None:
    from kascade.testing.tiny_models import build_tiny_classifier

    teacher = build_tiny_classifier(tmp_path / "teacher", seed=7)
    data = tmp_path / "reviews.jsonl"
    reviews = [("This movie was great, I loved it.", "positive"), ("This movie was terrible, I hated it.", "negative")]
    data.write_text(
        "".join(
            json.dumps({"id": f"{i}-{n}", "input": text, "label": label}) + "\n"
            for i, (text, label) in enumerate(reviews)
            for n in range(10)
        )
    )
    out = tmp_path / "student"
    result = _distill(
        "--student",
        str(tiny_classifier_dir),
        "--teacher",
        str(teacher),
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        "30",
        "--batch-size",
        "4",
        "--held-out",
        "0.3",
        "--learning-rate",
        "1e-2",
        "--temperature",
        "1",
        "--alpha",
        "1",
        "--eval-every",
        "30",
    )
    assert result.exit_code == 0, result.output
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["data"]["levels"] == {"soft targets (teacher in process)": provenance["data"]["train"]}
    assert provenance["after"]["answer_agreement"] == 1.0  # with alpha 1 it imitates the teacher, right or wrong
    assert "answer_accuracy" in provenance["after"]
    gate = provenance["gate"]  # held out per teacher label; the slices here are below 20 examples: shown, not judged
    assert set(gate["slices"]) <= {"label=positive", "label=negative"} and gate["slices"]
    assert gate["passed"] == (gate["gain"] >= 0.01) and ("promotion gate:" in result.output)
    engine = TransformersEngine.load(out, task="classify", served_model_name="clf", device="cpu")
    import asyncio

    answer = asyncio.run(engine.call(Endpoint.classify, {"input": "great"}))
    assert answer["data"][0]["label"] in {"negative", "positive"}
    asyncio.run(engine.aclose())


def test_on_policy_steps_through_a_teacher_server_use_its_prompt_logprobs(
    tiny_small_lm_dir: Path, tiny_large_lm_dir: Path, tmp_path: Path, answers_file: Callable[[int], Path]
) -> None:
    """The teacher served over HTTP (our model server speaks vLLM's prompt_logprobs); every step on-policy."""
    from kascade.runtime.server import create_model_server_app
    from kascade.runtime.serving import BackgroundServer

    data = answers_file(8)
    engine = TransformersEngine.load(tiny_large_lm_dir, served_model_name="teacher", device="cpu")
    with BackgroundServer(create_model_server_app(engine, "teacher")) as server:
        result = _distill(
            "--student",
            str(tiny_small_lm_dir),
            "--teacher-url",
            f"{server.url}/v1",
            "--teacher-model",
            "teacher",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "s"),
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--eval-generate",
            "0",
            "--held-out",
            "0.2",
            "--on-policy-fraction",
            "1",
            "--max-new-tokens",
            "4",
            "--teacher-top-k",
            "5",
        )
    assert result.exit_code == 0, result.output
    provenance = json.loads((tmp_path / "s" / "provenance.json").read_text())
    assert provenance["steps"] == 3 and all(loss > 0 for loss in provenance["loss_start_end"])
    named_wrong = _distill(
        "--student",
        str(tiny_small_lm_dir),
        "--teacher-url",
        "http://127.0.0.1:9/v1",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "t"),
        "--on-policy-fraction",
        "1",
    )
    assert named_wrong.exit_code != 0 and "--teacher-url needs --teacher-model" in named_wrong.output


def test_the_held_out_split_does_not_follow_a_datasets_own_split_by_the_same_ids() -> None:
    from kascade.distillation.examples import is_held_out
    from kascade.evaluation.datasets import stable_fraction

    test_part = [str(i) for i in range(5000) if stable_fraction(str(i)) < 0.35]  # how `NAME:test` is chosen
    share = sum(is_held_out(i, 0.5) for i in test_part) / len(test_part)
    assert 0.45 < share < 0.55
