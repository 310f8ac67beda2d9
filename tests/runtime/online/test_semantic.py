"""matcher semantic in the router: verdicts at the cutoff, off the event loop, batched, failures counted; and where
the router finds its encoder."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kascade.api.agreement import AnswerMatcher
from kascade.api.modelcascade import ModelCascade
from kascade.runtime.config import SemanticConfig, router_config_from_cascade
from kascade.runtime.models.catalog import ModelNotAvailable
from kascade.runtime.models.encoder import IMAGE_ENCODER_DIR, SentenceEncoder, is_exported, onnx_encoder_dir
from kascade.runtime.online import semantic
from kascade.runtime.online.agreement import AgreementQuestion
from kascade.runtime.online.semantic import SemanticJudge

BODY = {"messages": [{"role": "user", "content": "Capital of France?"}]}


def _question(answer: str, reference: str = "Paris") -> AgreementQuestion:
    return AgreementQuestion(body=BODY, answer=answer, reference=reference)


class ScriptedEncoder:
    """A stand-in for SentenceEncoder: the cosine of each pair is looked up by the answer's text.

    `hold` (when set) keeps the worker thread inside `cosines` until `release` is set, as a slow encoder would.
    """

    def __init__(self, cosines: dict[str, float], *, hold: bool = False, fail: bool = False) -> None:
        self.table = cosines
        self.calls: list[list[str]] = []
        self.fail = fail
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def cosines(self, left: Sequence[str], right: Sequence[str]) -> list[float]:
        self.calls.append(list(left))
        self.entered.set()
        self.release.wait(10)
        if self.fail:
            raise RuntimeError("onnxruntime: out of memory")
        return [self.table[text] for text in left]


def _judge(encoder: ScriptedEncoder, cutoff: float = 0.8) -> SemanticJudge:
    return SemanticJudge(encoder, cutoff)


def test_answers_agree_at_or_above_the_cutoff() -> None:
    judge = _judge(ScriptedEncoder({"Paris.": 0.93, "It is Paris": 0.8, "Lyon": 0.41}))
    assert judge.matcher is AnswerMatcher.semantic
    verdicts = asyncio.run(judge.agree([_question("Paris."), _question("It is Paris"), _question("Lyon")]))
    assert verdicts == [True, True, False]
    assert asyncio.run(judge.agree([])) == [] and judge.batches == 1


def test_an_encoder_failure_loses_those_samples_and_counts_them() -> None:
    encoder = ScriptedEncoder({"Paris.": 0.93}, fail=True)
    judge = _judge(encoder)
    assert asyncio.run(judge.agree([_question("Paris."), _question("Paris.")])) == [None, None]
    assert judge.failed == 2
    encoder.fail = False  # the next batch is judged again
    assert asyncio.run(judge.agree([_question("Paris.")])) == [True] and judge.failed == 2


def test_embedding_runs_off_the_event_loop_and_concurrent_questions_share_one_batch() -> None:
    encoder = ScriptedEncoder({"a": 0.9, "b": 0.1, "c": 0.85, "d": 0.2}, hold=True)
    judge = _judge(encoder)

    async def scenario() -> list[Any]:
        first = asyncio.create_task(judge.agree([_question("a")]))
        await asyncio.to_thread(encoder.entered.wait, 10)  # the first batch is in the worker thread now
        waiting = [asyncio.create_task(judge.agree([_question(x)])) for x in ("b", "c")]
        waiting.append(asyncio.create_task(judge.agree([_question("d"), _question("a")])))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not first.done()  # the loop ran on while the encoder worked (on the loop, it would be done)
        encoder.release.set()
        results = await asyncio.gather(first, *waiting)
        await judge.close()
        return results

    assert asyncio.run(scenario()) == [[True], [False], [True], [False, True]]
    assert encoder.calls == [["a"], ["b", "c", "d", "a"]]  # the three waiting calls were embedded together
    assert judge.batches == 2 and judge.failed == 0


def test_a_cancelled_caller_leaves_the_batch_to_the_others() -> None:
    encoder = ScriptedEncoder({"a": 0.9, "b": 0.1}, hold=True)
    judge = _judge(encoder)

    async def scenario() -> list[bool | None]:
        first = asyncio.create_task(judge.agree([_question("a")]))
        await asyncio.to_thread(encoder.entered.wait, 10)
        encoder.entered.clear()
        second = asyncio.create_task(judge.agree([_question("b")]))
        third = asyncio.create_task(judge.agree([_question("a")]))
        await asyncio.sleep(0)
        first.cancel()  # its batch goes on; the two waiting share the next one
        await asyncio.to_thread(encoder.release.set)
        return [*(await second), *(await third)]

    assert asyncio.run(scenario()) == [False, True]


def test_a_router_without_the_encoder_folder_fails_at_start_saying_where_it_should_be(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="no exported sentence encoder") as refused:
        SemanticJudge.from_config(SemanticConfig(model_dir=str(tmp_path / "missing"), cutoff=0.8))
    assert str(tmp_path / "missing") in refused.value.message and IMAGE_ENCODER_DIR in refused.value.message


@pytest.mark.slow  # loads a model
def test_from_config_judges_with_the_exported_encoder(tiny_encoder_onnx_dir: Path) -> None:
    judge = SemanticJudge.from_config(SemanticConfig(model_dir=str(tiny_encoder_onnx_dir), cutoff=0.999))
    same, other = "The cat sat on the mat.", "def add(a, b):\n    return a + b"
    encoder = SentenceEncoder(tiny_encoder_onnx_dir)
    assert encoder.cosines([same], [other])[0] < 0.999  # the tiny encoder tells these apart
    assert asyncio.run(judge.agree([_question(same, same), _question(same, other)])) == [True, False]


@pytest.mark.slow  # loads a model
def test_local_mode_exports_the_encoder_on_first_use(
    tiny_encoder_onnx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported: list[Path] = []

    def export(out: Path, cache_dir: Path | None = None) -> Path:  # the packaged MiniLM, in miniature
        exported.append(out)
        shutil.copytree(tiny_encoder_onnx_dir, out)
        return out

    monkeypatch.setattr(semantic, "export_packaged_encoder", export)
    folder = onnx_encoder_dir(tmp_path)
    config = SemanticConfig(model_dir=str(folder), cutoff=0.8, export_if_missing=True)
    SemanticJudge.from_config(config)
    SemanticJudge.from_config(config)
    assert exported == [folder] and is_exported(folder)  # once: the second router start finds it


def _chat_cascade(**calibration: Any) -> ModelCascade:
    return ModelCascade.model_validate(
        {
            "apiVersion": "kascade.dev/v1alpha1",
            "kind": "ModelCascade",
            "metadata": {"name": "chat"},
            "spec": {
                "task": "chat",
                "tiers": [
                    {"name": "small", "model": {"uri": "hf://org/small"}, "accept": {"threshold": 0.5}},
                    {
                        "name": "hosted",
                        "engine": "external",
                        "model": {"uri": "https://api.example.com/v1", "servedName": "big"},
                    },
                ],
                "calibration": {"minAgreement": 0.9, "shadowSampleRate": 0.1, **calibration},
            },
        }
    )


def test_the_router_config_names_the_encoder_and_the_spec_cutoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KASCADE_CACHE_DIR", str(tmp_path))
    cascade = _chat_cascade(semanticCutoff=0.7)  # an external last tier, no judge.url: semantic by default
    urls = {"small": "http://small/v1", "hosted": "https://api.example.com/v1"}
    in_cluster = router_config_from_cascade(cascade, urls).shadow_sampling
    assert in_cluster is not None and in_cluster.matcher is AnswerMatcher.semantic
    assert in_cluster.semantic == SemanticConfig(model_dir=IMAGE_ENCODER_DIR, cutoff=0.7)
    local = router_config_from_cascade(cascade, urls, calibrate_in_process=True).shadow_sampling
    assert local is not None and local.semantic is not None
    assert local.semantic.model_dir == str(onnx_encoder_dir(tmp_path)) and local.semantic.export_if_missing
    exact = router_config_from_cascade(_chat_cascade(matcher="exact"), urls).shadow_sampling
    assert exact is not None and exact.semantic is None


def test_kascade_route_refuses_to_start_without_the_encoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kascade.runtime.router import run_router

    missing = tmp_path / "encoder"
    config = tmp_path / "router.yaml"
    config.write_text(
        "cascade: chat\ntiers:\n"
        "  - {name: small, served_model: small, url: 'http://127.0.0.1:9/v1', accept: {threshold: 0.5}}\n"
        "  - {name: large, served_model: large, url: 'http://127.0.0.1:9/v1'}\n"
        f"shadow_sampling: {{rate: 0.5, matcher: semantic, semantic: {{model_dir: '{missing}', cutoff: 0.8}}}}\n"
    )
    assert run_router(config_path=config, port=0, host="127.0.0.1") == 2  # before it binds anything
    said = capsys.readouterr().out
    assert f"kascade route: matcher semantic: no exported sentence encoder in {missing}" in said
