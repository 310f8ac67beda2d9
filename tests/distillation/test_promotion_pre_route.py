"""A cluster run judges as its cascade does and refits a pre-routed tier's score; promotion serves both. Pure.

The operator renders the judge (the cascade's last tier, or its judge.url with the key from a Secret) and the
tier's pre-route goal into the run and its Job; a promoted run's certified preRoute is served with its model, the
tier's own probeRate kept, and the spec is never written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kascade.api.agreement import AnswerMatcher
from kascade.api.distill_settings import JUDGE_API_KEY_ENV, DistillSettings
from kascade.api.distillation import Distillation, PromotionReason
from kascade.api.modelcascade import ModelCascade
from kascade.api.pre_route import PreRoute
from kascade.operator.build_distillation import build_distillation, build_distillation_job
from kascade.operator.promotion import decide_promotion, served_cascade, serving
from kascade.operator.settings import OperatorSettings

SETTINGS = OperatorSettings()
SMALL = "pvc://models/small-v1"
TIER_PRE_ROUTE = {"dimensions": 16, "weights": PreRoute.encode_weights([0.0] * 16), "bias": 0.0, "skipBelow": 0.1}
TIER_PRE_ROUTE |= {"maxKeptSkipped": 0.08, "probeRate": 0.2}
REFITTED = PreRoute(
    dimensions=32, weights=PreRoute.encode_weights([0.5] * 32), bias=-1.0, skip_below=0.3, max_kept_skipped=0.08
)


def cascade(*, calibration: dict[str, Any] | None = None, **policy: Any) -> ModelCascade:
    spec: dict[str, Any] = {
        "tiers": [
            {
                "name": "small",
                "model": {"uri": SMALL},
                "accept": {"method": "geometricMean", "threshold": 0.5},
                "preRoute": TIER_PRE_ROUTE,
            },
            {"name": "large", "model": {"uri": "hf://org/large"}, "resources": {"gpus": 1}},
        ],
        "escalationLog": {"enabled": True, "uri": "pvc://escalations/chat"},
        "distillation": {"outputUri": "pvc://students/chat", **policy},
    }
    if calibration is not None:
        spec["calibration"] = calibration
    return ModelCascade.model_validate(
        {
            "apiVersion": "kascade.dev/v1alpha1",
            "kind": "ModelCascade",
            "metadata": {"name": "chat", "namespace": "llm", "creationTimestamp": "2026-11-30T00:00:00Z"},
            "spec": spec,
        }
    )


def job_of(run: Distillation) -> tuple[DistillSettings, dict[str, Any]]:
    container = build_distillation_job(run, SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    return DistillSettings.model_validate_json(args[args.index("--settings") + 1]), container


def test_a_chat_cascade_judges_its_runs_held_out_answers_by_its_last_tier_and_refits_the_pre_routed_tier() -> None:
    chat = cascade(calibration={"minAgreement": 0.9, "confidence": 0.9})
    run = Distillation.model_validate(build_distillation(chat, SETTINGS, name="chat-d1", log_records=0))
    assert run.spec.matcher is AnswerMatcher.judge and run.spec.judge is not None
    assert run.spec.judge.url == "http://chat-large.llm.svc:8000/v1" and run.spec.judge.model == "large"
    assert (run.spec.pre_route_dimensions, run.spec.max_kept_skipped, run.spec.confidence) == (16, 0.08, 0.9)
    settings, container = job_of(run)
    assert settings.matcher is AnswerMatcher.judge
    assert settings.judge_endpoint == ("http://chat-large.llm.svc:8000/v1", "large")
    assert (settings.pre_route_tier, settings.pre_route_dimensions, settings.max_kept_skipped) == ("small", 16, 0.08)
    assert settings.confidence == 0.9
    assert JUDGE_API_KEY_ENV not in {env["name"] for env in container["env"]}


def test_a_judge_url_of_the_cascade_is_asked_with_its_key_from_the_secret() -> None:
    judge = {"url": "https://judge.example/v1", "model": "grader", "apiKeySecret": {"name": "judge", "key": "token"}}
    chat = cascade(calibration={"minAgreement": 0.9, "judge": judge | {"minProbability": 0.7}})
    run = Distillation.model_validate(build_distillation(chat, SETTINGS, name="chat-d1", log_records=0))
    settings, container = job_of(run)
    assert settings.judge_endpoint == ("https://judge.example/v1", "grader") and settings.judge_min_probability == 0.7
    (key,) = [env for env in container["env"] if env["name"] == JUDGE_API_KEY_ENV]
    assert key["valueFrom"] == {"secretKeyRef": {"name": "judge", "key": "token"}}


def test_a_semantic_cascade_gives_its_cutoff_and_a_tier_without_pre_route_is_not_refitted() -> None:
    chat = cascade(calibration={"minAgreement": 0.9, "matcher": "semantic", "semanticCutoff": 0.7})
    chat.spec.tiers[0].pre_route = None
    run = Distillation.model_validate(build_distillation(chat, SETTINGS, name="chat-d1", log_records=0))
    settings, _ = job_of(run)
    assert settings.matcher is AnswerMatcher.semantic and settings.semantic_cutoff == 0.7
    assert run.spec.judge is None and settings.pre_route_tier is None


def finished_run(chat: ModelCascade, **status: Any) -> Distillation:
    manifest = build_distillation(chat, SETTINGS, name="chat-d1", log_records=0)
    manifest["metadata"]["creationTimestamp"] = "2026-11-30T12:00:00Z"
    manifest["status"] = {
        "phase": "Succeeded",
        "model": "pvc://students/chat/chat-d1",
        "gate": {"passed": True, "gain": 0.05, "preRoute": "pre-route score refitted on 400 prompts"},
        **status,
    }
    return Distillation.model_validate(manifest)


def test_a_promotion_serves_the_refitted_pre_route_with_the_new_model_and_the_spec_is_untouched() -> None:
    chat = cascade()
    run = finished_run(chat, preRoute=REFITTED.model_dump(mode="json", by_alias=True, exclude_none=True))
    decision = decide_promotion(run, chat, serving(chat, []), now="2026-11-30T13:00:00Z")
    assert decision is not None and decision.promoted and "with its refitted pre-route score" in decision.message
    assert run.status is not None
    run.status.promotion = decision
    served = served_cascade(chat, serving(chat, [run]))
    tier = served.spec.tiers[0]
    assert tier.model.uri == "pvc://students/chat/chat-d1" and tier.pre_route is not None
    assert tier.pre_route.weights == REFITTED.weights and tier.pre_route.skip_below == 0.3
    assert tier.pre_route.probe_rate == 0.2, "the tier's own probe rate stays"
    assert chat.spec.tiers[0].pre_route == PreRoute.model_validate(TIER_PRE_ROUTE), "the spec is the user's"
    # Edited model.uri (a pin): the promotion is withdrawn, and the tier serves its own model and preRoute.
    pinned = cascade()
    pinned.spec.tiers[0].model.uri = "pvc://models/small-v2"
    assert served_cascade(pinned, serving(pinned, [run])).spec.tiers[0].pre_route == pinned.spec.tiers[0].pre_route


def test_a_run_whose_refit_was_not_certified_is_promoted_with_the_tiers_own_pre_route() -> None:
    chat = cascade()
    run = finished_run(chat)
    decision = decide_promotion(run, chat, serving(chat, []), now="2026-11-30T13:00:00Z")
    assert decision is not None and decision.promoted and "pre-route" not in decision.message
    assert run.status is not None
    run.status.promotion = decision
    assert served_cascade(chat, serving(chat, [run])).spec.tiers[0].pre_route == chat.spec.tiers[0].pre_route


def test_manual_promotion_says_to_serve_the_refitted_pre_route_too() -> None:
    chat = cascade(promotion="Manual")
    run = finished_run(chat, preRoute=REFITTED.model_dump(mode="json", by_alias=True, exclude_none=True))
    decision = decide_promotion(run, chat, serving(chat, []), now=datetime(2026, 11, 30, tzinfo=UTC).isoformat())
    assert decision is not None and not decision.promoted and decision.reason == PromotionReason.manual
    assert "its preRoute to this run's status.preRoute" in decision.message
