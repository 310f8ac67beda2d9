"""The Calibrated condition when a pure matcher judges free text: answers that rarely agree as text are named as the
reason, with the matchers to use instead."""

from __future__ import annotations

import random
from typing import Any

from kascade.api.counters import CounterFigures
from kascade.api.modelcascade import ModelCascade
from kascade.calibration.online import bin_key
from kascade.operator.calibration_status import calibrate

NOW = "2026-12-07T00:00:00Z"


def _cascade(task: str = "chat", *, last_external: bool = False, **calibration: Any) -> ModelCascade:
    last: dict[str, Any] = {"name": "large", "model": {"uri": "hf://org/large"}}
    if last_external:
        last = {"name": "large", "engine": "external", "model": {"uri": "https://api.example.com/v1"}}
    goal = {"minAgreement": 0.9, "shadowSampleRate": 0.5, "minSamples": 20, **calibration}
    accept = {"threshold": 0.5, **({"method": "maxProb"} if task == "classify" else {})}
    return ModelCascade.model_validate(
        {
            "apiVersion": "kascade.dev/v1alpha1",
            "kind": "ModelCascade",
            "metadata": {"name": "cascade"},
            "spec": {
                "task": task,
                "tiers": [{"name": "small", "model": {"uri": "hf://org/small"}, "accept": accept}, last],
                "calibration": goal,
            },
        }
    )


def _samples(count: int, agreement: float, seed: int = 0) -> CounterFigures:
    """`count` samples with uniform scores, each agreeing with probability `agreement`."""
    draw = random.Random(seed)
    samples: dict[str, int] = {}
    agreed: dict[str, int] = {}
    for _ in range(count):
        key = bin_key("small", draw.random())
        samples[key] = samples.get(key, 0) + 1
        if draw.random() < agreement:
            agreed[key] = agreed.get(key, 0) + 1
    return CounterFigures(calibration_samples=samples, calibration_agreed=agreed)


def _message(cascade: ModelCascade, folded: CounterFigures) -> tuple[str, str]:
    condition = calibrate(cascade, None, folded, now=NOW, generation=1).condition
    assert condition is not None
    return condition.status, condition.message


def test_exact_on_chat_that_rarely_agrees_names_the_free_text_matchers() -> None:
    folded = _samples(40, agreement=0.127)  # the demo pair's share of answers equal as text
    held = _cascade(matcher="exact", maxThreshold=0.95)  # no threshold within the bounds certifies the goal
    status, message = _message(held, folded)
    assert status == "False" and "held at maxThreshold 0.95" in message
    assert "agree under matcher exact" in message and "set spec.calibration.matcher to judge or semantic" in message
    # With maxThreshold 1 the goal is certified by keeping nothing: still True, and it says why the tier keeps nothing.
    status, message = _message(_cascade(matcher="exact"), folded)
    assert status == "True" and 'tier "small": only ' in message and "keeps almost nothing" in message


def test_without_a_judge_to_ask_semantic_comes_first() -> None:
    _, message = _message(_cascade(matcher="exact", last_external=True), _samples(40, agreement=0.1))
    assert "set spec.calibration.matcher to semantic (or judge with spec.calibration.judge.url)" in message


def test_a_number_matcher_on_chat_is_advised_too_but_not_a_label_matcher_on_classify() -> None:
    rare = _samples(40, agreement=0.1)
    assert "agree under matcher number" in _message(_cascade(matcher="number"), rare)[1]
    assert "rarely agree" not in _message(_cascade("classify", matcher="label"), rare)[1]


def test_no_advice_when_the_samples_agree_often_or_are_still_being_collected() -> None:
    assert "rarely agree" not in _message(_cascade(matcher="exact"), _samples(400, agreement=0.9))[1]
    status, message = _message(_cascade(matcher="exact"), _samples(10, agreement=0.0))
    assert status == "False" and "10 of 20 samples" in message and "rarely agree" not in message
    assert "rarely agree" not in _message(_cascade(matcher="semantic"), _samples(40, agreement=0.1))[1]
