"""Fitting the pre-route score: a separable set is told apart, skipBelow is certified, bad parameters are refused."""

from __future__ import annotations

import base64
import importlib.util
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from kascade.api.pre_route import PRE_ROUTE_WEIGHTS_PER_DIMENSION, PreRoute
from kascade.cli import app
from kascade.evaluation.answer_cache import AnswerFile
from kascade.evaluation.collect import GenerationSettings, model_identity
from kascade.evaluation.pre_route_fit import (
    KeptPrompts,
    fit_pre_route,
    fit_weights,
    keep_probabilities,
    prompt_texts,
    request_body,
    split_fit_and_choice,
)
from kascade.evaluation.records import Example, TierAnswer
from kascade.runtime.local.manifest import load_manifest
from kascade.runtime.scoring.pre_route import PreRouteScorer

_WORDS = ["apple", "river", "stone", "cloud", "green", "quiet", "paper", "light", "sharp", "ocean"]


def _separable(n: int, seed: int) -> KeptPrompts:
    """Kept: a word to translate; declined: the gcd of two large numbers (what a small model gets wrong)."""
    rng = random.Random(seed)
    texts, kept = [], []
    for _ in range(n):
        if rng.random() < 0.4:
            texts.append(f"user: Translate the word {rng.choice(_WORDS)} into French.")
            kept.append(True)
        else:
            texts.append(f"user: What is the greatest common divisor of {rng.randint(10**5, 10**6)} and 84?")
            kept.append(False)
    return KeptPrompts(tuple(texts), tuple(kept))


def test_a_separable_set_reaches_a_high_held_out_auroc_and_a_certified_skip() -> None:
    fitted = fit_pre_route(
        _separable(200, seed=1), _separable(400, seed=2), _separable(300, seed=3), dimensions=1024, source="synthetic"
    )
    assert fitted.held_out is not None and fitted.held_out.auroc is not None
    assert fitted.held_out.auroc > 0.99
    assert fitted.choice.certified and fitted.pre_route.skip_below == fitted.choice.skip_below > 0
    # Nearly every declined prompt is skipped, and the kept ones are not.
    assert fitted.held_out.skipped >= 0.9 * (fitted.held_out.requests - fitted.held_out.kept)
    assert fitted.held_out.kept_skipped <= 0.05 * fitted.held_out.kept
    record = fitted.pre_route.fitted
    assert record is not None and record.examples == 200 and record.source == "synthetic"
    assert record.held_out_auroc == pytest.approx(fitted.held_out.auroc, abs=1e-4)
    assert (
        record.kept_skipped_bound == pytest.approx(fitted.choice.bound, abs=1e-4) and record.kept_skipped_bound < 0.05
    )


def test_the_router_scores_a_request_as_the_fit_did() -> None:
    fitted = fit_pre_route(_separable(200, seed=1), _separable(200, seed=2), dimensions=256)
    example = Example(id="1", messages=({"role": "user", "content": "Translate the word stone into French."},))
    (text,) = prompt_texts([example])
    scorer = PreRouteScorer(fitted.pre_route)
    assert scorer.probability(request_body(example)) == keep_probabilities(fitted.pre_route, [text])[0]
    assert not scorer.skips(scorer.probability(request_body(example)))
    # The manifest's form of the result reads back as the same parameters.
    again = PreRoute.model_validate(fitted.pre_route.model_dump(mode="json", by_alias=True))
    assert again == fitted.pre_route


def test_one_class_only_gives_a_constant_score_and_too_few_kept_never_skip() -> None:
    data = KeptPrompts(("user: a", "user: b", "user: c"), (False, False, False))
    weights, bias = fit_weights(data, dimensions=64)
    assert weights == [0.0] * 64 and bias < -10
    fitted = fit_pre_route(_separable(100, seed=1), _separable(20, seed=2), dimensions=64)
    assert not fitted.choice.certified and fitted.pre_route.skip_below == 0.0
    assert fitted.pre_route.fitted is not None and fitted.pre_route.fitted.kept_skipped_bound is None
    with pytest.raises(ValueError, match="at least one prompt"):
        fit_weights(KeptPrompts((), ()))


def test_the_split_is_stable_and_disjoint() -> None:
    keys = [f"id-{i}" for i in range(1000)]
    fit, choose = split_fit_and_choice(keys)
    assert not set(fit) & set(choose) and len(fit) + len(choose) == 1000
    assert 400 < len(fit) < 600
    assert split_fit_and_choice(list(reversed(keys)))[0] == sorted(999 - i for i in fit)


def test_weights_whose_count_is_not_the_dimensions_are_refused() -> None:
    with pytest.raises(ValidationError, match="got 32 values for 64 dimensions"):
        PreRoute(dimensions=64, weights=PreRoute.encode_weights([0.0] * 32), bias=0.0, skip_below=0.1)
    with pytest.raises(ValidationError, match="base64"):
        PreRoute(dimensions=64, weights="not base64!", bias=0.0, skip_below=0.1)
    infinite = base64.b64encode(b"\x00\x00\x80\x7f" * 64).decode()
    with pytest.raises(ValidationError) as refused:
        PreRoute(dimensions=64, weights=infinite, bias=0.0, skip_below=0.1)
    assert PRE_ROUTE_WEIGHTS_PER_DIMENSION in str(refused.value)
    with pytest.raises(ValueError, match="prompts for"):
        KeptPrompts(("a",), (True, False))


def _chat_cascade(path: Path) -> Path:
    path.write_text("""\
apiVersion: kascade.dev/v1alpha1
kind: ModelCascade
metadata:
  name: pre-routed
spec:
  task: chat
  tiers:
    # the small one answers first
    - name: small
      model:
        uri: http://127.0.0.1:9/v1
        servedName: small-model
      engine: external
      price: {currency: USD, inputPerMillion: 0.1, outputPerMillion: 0.2}
      accept:
        method: geometricMean
        threshold: 0.5
    - name: large
      model:
        uri: http://127.0.0.1:9/v1
        servedName: large-model
      engine: external
      price: {currency: USD, inputPerMillion: 1, outputPerMillion: 2}
""")
    return path


def _answer(text: str, logprob: float) -> TierAnswer:
    return TierAnswer(
        text=text,
        tokens=(text, "."),
        logprobs=(logprob, logprob),
        top_logprobs=((logprob, -6.0), (logprob, -6.0)),
        prompt_tokens=12,
        completion_tokens=2,
    )


def _cached_chat_case(tmp_path: Path) -> tuple[Path, Path, Path]:
    """600 prompts answered by both tiers (cached): the small tier is sure and right on the translations only."""
    manifest = _chat_cascade(tmp_path / "cascade.yaml")
    data, answers = tmp_path / "prompts.jsonl", tmp_path / "answers"
    cascade = load_manifest(manifest)
    settings = {"task": "chat"} | GenerationSettings().as_dict()
    small, large = (
        AnswerFile(answers, tier.served_name, model_identity(tier, None), settings) for tier in cascade.spec.tiers
    )
    examples = []
    for example in _separable(600, seed=5).texts:
        examples.append(Example(id=str(len(examples)), messages=({"role": "user", "content": example[6:]},)))
    small.put_many(
        [(e, _answer("oui", -0.01) if "French" in prompt_texts([e])[0] else _answer("42", -2.5)) for e in examples]
    )
    large.put_many([(e, _answer("oui" if "French" in prompt_texts([e])[0] else "7", -0.01)) for e in examples])
    data.write_text("".join(e.model_dump_json(exclude_none=True) + "\n" for e in examples))
    return manifest, data, answers


def _crd_refusals(document: dict[str, Any]) -> list[str]:
    """What the API server would refuse in `document` (the CRD's schema and CEL rules: tests/api's kit)."""
    location = Path(__file__).resolve().parents[1] / "api" / "crd_testkit.py"
    spec = importlib.util.spec_from_file_location("crd_testkit", location)
    assert spec is not None and spec.loader is not None
    kit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kit)
    return list(kit.refusals(document))


def test_calibrate_fits_the_pre_route_score_and_writes_a_manifest_the_crd_accepts(tmp_path: Path) -> None:
    manifest, data, answers = _cached_chat_case(tmp_path)
    common = ["calibrate", "-f", str(manifest), "--data", str(data), "--match", "exact", "--answers", str(answers)]
    result = CliRunner().invoke(app, [*common, "--cached-only", "--goal", "minAgreement=0.9", "--pre-route", "--write"])
    assert result.exit_code == 0, result.output
    assert "pre-route score (hashedNgrams, 4096 dimensions) fitted on" in result.output
    assert "skipBelow" in result.output and "held out (" in result.output and "AUROC 1.000" in result.output
    written = manifest.read_text()
    assert "# the small one answers first" in written and "Fitted by `kascade calibrate --pre-route`" in written
    cascade = load_manifest(manifest)
    pre_route = cascade.spec.tiers[0].pre_route
    assert pre_route is not None and pre_route.skip_below > 0 and pre_route.fitted is not None
    assert pre_route.fitted.kept_skipped_bound is not None and pre_route.fitted.kept_skipped_bound <= 0.05
    assert written.index("accept:") < written.index("preRoute:")  # a new preRoute goes after the accept rule
    (document,) = [d for d in yaml.safe_load_all(written) if d]
    assert _crd_refusals(document) == []
    # Calibrating again replaces the score and its note: one preRoute, one note.
    again = CliRunner().invoke(
        app, [*common, "--cached-only", "--goal", "minAgreement=0.9", "--pre-route", "--write", "--probe-rate", "0.1"]
    )
    assert again.exit_code == 0, again.output
    rewritten = manifest.read_text()
    assert rewritten.count("preRoute:") == 1 and rewritten.count("Fitted by `kascade calibrate --pre-route`") == 1
    assert load_manifest(manifest).spec.tiers[0].pre_route.probe_rate == 0.1  # type: ignore[union-attr]


def test_calibrate_says_when_no_skip_is_certified_and_leaves_the_manifest_alone(tmp_path: Path) -> None:
    manifest, data, answers = _cached_chat_case(tmp_path)
    args = ["calibrate", "-f", str(manifest), "--data", str(data), "--match", "exact", "--answers", str(answers)]
    result = CliRunner().invoke(
        app,
        [*args, "--cached-only", "--goal", "minAgreement=0.9", "--pre-route", "--max-kept-skipped", "0.001", "--write"],
    )
    assert result.exit_code == 0, result.output
    assert "no skipBelow is certified" in result.output and "skipBelow 0 (never skip)" in result.output
    assert load_manifest(manifest).spec.tiers[0].pre_route is None
    refused = CliRunner().invoke(
        app, [*args, "--goal", "minAgreement=0.9", "--pre-route", "--pre-route-dimensions", "8"]
    )
    assert refused.exit_code != 0
