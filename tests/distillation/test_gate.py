"""The promotion gate: a gain overall and no slice worse beyond the tolerance, or the student is not promoted."""

from __future__ import annotations

from kascade.api.agreement import AnswerMatcher
from kascade.api.distill_settings import DistillSettings
from kascade.api.distillation import Distillation, SliceChange
from kascade.api.loop import Gate
from kascade.api.modelcascade import ModelCascade
from kascade.distillation.evaluate import judged_answers
from kascade.distillation.examples import DistillExample
from kascade.distillation.gate import promotion_gate
from kascade.distillation.result import HeldOutFigures
from kascade.operator.build_distillation import build_distillation, build_distillation_job
from kascade.operator.settings import OperatorSettings

GATE = Gate(min_agreement_gain=0.01, slice_tolerance=0.02, min_slice_examples=20)


def figures(agreement: float, slices: dict[str, list[int]]) -> HeldOutFigures:
    return HeldOutFigures.model_validate(
        {"answer_agreement": agreement, "examples": sum(n for _, n in slices.values()), "slices": slices}
    )


def test_a_gain_with_no_slice_worse_passes() -> None:
    before = figures(0.70, {"label=a": [35, 50], "label=b": [35, 50]})
    after = figures(0.80, {"label=a": [40, 50], "label=b": [40, 50]})
    verdict = promotion_gate(before, after, GATE)
    assert verdict.passed and verdict.reasons == [] and verdict.gain is not None and abs(verdict.gain - 0.10) < 1e-12
    assert verdict.slices["label=a"] == SliceChange(examples=50, before=0.7, after=0.8, change=0.8 - 0.7)


def test_an_aggregate_gain_that_hides_a_slices_regression_fails_and_says_which() -> None:
    before = figures(0.70, {"label=a": [20, 50], "label=b": [50, 50]})
    after = figures(0.75, {"label=a": [35, 50], "label=b": [40, 50]})  # a: +0.30, b: -0.20
    verdict = promotion_gate(before, after, GATE)
    assert not verdict.passed
    (reason,) = verdict.reasons
    assert reason.startswith("slice label=b (50 examples) lost -0.2000")


def test_too_small_a_gain_fails_and_small_slices_are_shown_but_not_judged() -> None:
    before = figures(0.70, {"label=a": [7, 10], "label=b": [63, 90]})
    after = figures(0.705, {"label=a": [2, 10], "label=b": [68, 90]})  # a lost 0.5, but has 10 examples
    verdict = promotion_gate(before, after, GATE)
    assert not verdict.passed and len(verdict.reasons) == 1 and "gained +0.0050" in verdict.reasons[0]
    assert abs(verdict.slices["label=a"].change + 0.5) < 1e-12


def test_nothing_to_compare_is_a_failure() -> None:
    verdict = promotion_gate(HeldOutFigures(), HeldOutFigures(), GATE)
    assert not verdict.passed and verdict.reasons == ["no held-out answers to compare"]


def test_a_cascade_calibrated_by_number_gets_a_gate_that_judges_held_out_answers_by_number() -> None:
    """`calibration.matcher: number` -> the run the operator creates -> its Job's settings -> the held-out agreement."""
    cascade = ModelCascade.model_validate(
        {
            "apiVersion": "kascade.dev/v1alpha1",
            "kind": "ModelCascade",
            "metadata": {"name": "math", "namespace": "llm"},
            "spec": {
                "tiers": [
                    {"name": "small", "model": {"uri": "pvc://models/small"}, "accept": {"threshold": 0.5}},
                    {"name": "large", "model": {"uri": "hf://org/large"}},
                ],
                "calibration": {"minAgreement": 0.9, "matcher": "number"},
                "escalationLog": {"enabled": True, "uri": "pvc://escalations/math"},
                "distillation": {"outputUri": "pvc://students/math"},
            },
        }
    )
    operator = OperatorSettings()
    run = Distillation.model_validate(build_distillation(cascade, operator, name="math-d1", log_records=0))
    assert run.spec.matcher is AnswerMatcher.number
    args = build_distillation_job(run, operator)["spec"]["template"]["spec"]["containers"][0]["args"]
    settings = DistillSettings.model_validate_json(args[args.index("--settings") + 1])
    assert settings.matcher is AnswerMatcher.number
    held_out = [DistillExample(id="1", kind="chat", prompt=[], target="The total is 42.", reference="42")]
    # The same final number in other words agrees; judged by exact text, it would not.
    assert judged_answers(settings.matcher, ["So the answer is 42"], held_out) == ([True], [True])
    assert judged_answers(AnswerMatcher.exact, ["So the answer is 42"], held_out) == ([False], [False])
