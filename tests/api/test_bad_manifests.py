"""Bad ModelCascades are refused twice: by the API server (schema or CEL) and by the model.

The server side is the CRD as shipped, checked offline (crd_testkit): the
OpenAPI schema with jsonschema, the CEL rules with cel-python. Each case also
names the words of the model's error, so that the operator's condition message
tells the user what to fix.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from crd_testkit import cel_failures, refusals, schema_errors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kascade.api.modelcascade import ModelCascade
from kascade.api.pre_route import PreRoute

GOOD: dict[str, Any] = {
    "apiVersion": "kascade.dev/v1alpha1",
    "kind": "ModelCascade",
    "metadata": {"name": "demo", "namespace": "default"},
    "spec": {
        "task": "chat",
        "tiers": [
            {
                "name": "small",
                "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
                "resources": {"gpus": 1, "gpuType": "NVIDIA-L4", "cpu": 4, "memory": "16Gi"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
                "price": {"currency": "USD", "inputPerMillion": 0.1, "outputPerMillion": 0.2},
                "accept": {"method": "geometricMean", "threshold": 0.8},
            },
            {"name": "large", "model": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct"}},
        ],
        "router": {"timeoutSeconds": 30},
    },
}


@dataclass
class Case:
    id: str
    change: Callable[[dict[str, Any]], None]
    refused_by: str  # "schema" or "cel"
    server_says: str  # a piece of the server-side refusal ("path: message")
    model_says: str  # a piece of the pydantic error


def _tier(i: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda m: m["spec"]["tiers"][i]


def _set(getter: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: getter(m).__setitem__(key, value)


def _spec(m: dict[str, Any]) -> dict[str, Any]:
    return m["spec"]


def _del(getter: Callable[[dict[str, Any]], dict[str, Any]], key: str) -> Callable[[dict[str, Any]], None]:
    return lambda m: getter(m).pop(key)


def _classify_with_default_method(m: dict[str, Any]) -> None:
    m["spec"]["task"] = "classify"
    del m["spec"]["tiers"][0]["accept"]["method"]  # defaults to geometricMean, a generative method


def _online_in_early_mode(m: dict[str, Any]) -> None:
    m["spec"]["calibration"] = {"minAgreement": 0.9, "shadowSampleRate": 0.05}
    m["spec"].setdefault("router", {})["streaming"] = {"mode": "early", "earlyTokens": 16}


CASES = [
    Case(
        "wrong-type-replicas",
        _set(_tier(0), "replicas", "two"),
        "schema",
        "spec.tiers.0.replicas: 'two' is not of type 'integer'",
        "valid integer",
    ),
    Case(
        "wrong-type-threshold",
        _set(lambda m: _tier(0)(m)["accept"], "threshold", "high"),
        "schema",
        "spec.tiers.0.accept.threshold: 'high' is not of type 'number'",
        "valid number",
    ),
    Case(
        "wrong-type-tiers",
        _set(_spec, "tiers", {"name": "small"}),
        "schema",
        "spec.tiers: {'name': 'small'} is not of type 'array'",
        "valid list",
    ),
    Case(
        "unknown-engine",
        _set(_tier(0), "engine", "tgi"),
        "schema",
        "spec.tiers.0.engine: 'tgi' is not one of ['vllm', 'transformers', 'external']",
        "'vllm', 'transformers' or 'external'",
    ),
    Case(
        "unknown-task",
        _set(_spec, "task", "summarize"),
        "schema",
        "spec.task: 'summarize' is not one of",
        "'chat', 'completion' or 'classify'",
    ),
    Case(
        "negative-replicas",
        _set(_tier(0), "replicas", -1),
        "schema",
        "spec.tiers.0.replicas: -1 is less than the minimum of 0",
        "greater than or equal to 0",
    ),
    Case(
        "negative-router-replicas",
        _set(lambda m: m["spec"]["router"], "replicas", -2),
        "schema",
        "spec.router.replicas: -2 is less than the minimum of 0",
        "greater than or equal to 0",
    ),
    Case(
        "threshold-above-one",
        _set(lambda m: _tier(0)(m)["accept"], "threshold", 1.5),
        "schema",
        "spec.tiers.0.accept.threshold: 1.5 is greater than the maximum of 1",
        "less than or equal to 1",
    ),
    Case(
        "quantile-of-one",
        _set(lambda m: _tier(0)(m)["accept"], "quantile", 1),
        "schema",
        "spec.tiers.0.accept.quantile: 1 is greater than or equal to the maximum of 1",
        "less than 1",
    ),
    Case(
        "zero-timeout",
        _set(lambda m: m["spec"]["router"], "timeoutSeconds", 0),
        "schema",
        "spec.router.timeoutSeconds: 0 is less than or equal to the minimum of 0",
        "greater than 0",
    ),
    Case(
        "negative-price",
        _set(lambda m: _tier(0)(m)["price"], "inputPerMillion", -0.01),
        "schema",
        "spec.tiers.0.price.inputPerMillion: -0.01 is less than the minimum of 0",
        "greater than or equal to 0",
    ),
    Case(
        "negative-gpu-hour-price",
        _set(lambda m: _tier(0)(m)["price"], "perGpuHour", -1),
        "schema",
        "spec.tiers.0.price.perGpuHour: -1 is less than the minimum of 0",
        "greater than or equal to 0",
    ),
    Case(
        "lower-case-currency",
        _set(lambda m: _tier(0)(m)["price"], "currency", "usd"),
        "schema",
        "spec.tiers.0.price.currency: 'usd' does not match",
        "should match pattern",
    ),
    Case(
        "empty-tier-list", _set(_spec, "tiers", []), "schema", "spec.tiers: [] should be non-empty", "at least 1 item"
    ),
    Case(
        "nine-tiers",
        lambda m: m["spec"].__setitem__(
            "tiers",
            [{"name": f"t{i}", "model": {"uri": "hf://a/b"}, "accept": {"threshold": 0.5}} for i in range(8)]
            + [{"name": "last", "model": {"uri": "hf://a/b"}}],
        ),
        "schema",
        "spec.tiers: ",
        "at most 8 items",
    ),
    Case(
        "unknown-field",
        _set(_tier(0), "gpus", 1),
        "schema",
        "spec.tiers.0: Additional properties are not allowed ('gpus' was unexpected)",
        "Extra inputs are not permitted",
    ),
    Case(
        "missing-model-uri",
        _set(_tier(0), "model", {"servedName": "qwen"}),
        "schema",
        "spec.tiers.0.model: 'uri' is a required property",
        "Field required",
    ),
    Case(
        "empty-model-uri",
        _set(lambda m: _tier(0)(m)["model"], "uri", ""),
        "schema",
        "spec.tiers.0.model.uri: '' should be non-empty",
        "at least 1 character",
    ),
    Case(
        "missing-model",
        _del(_tier(1), "model"),
        "schema",
        "spec.tiers.1: 'model' is a required property",
        "Field required",
    ),
    Case("missing-spec", lambda m: m.pop("spec"), "schema", "<root>: 'spec' is a required property", "Field required"),
    Case(
        "tier-name-not-dns-label",
        _set(_tier(0), "name", "Small_Tier"),
        "schema",
        "spec.tiers.0.name: 'Small_Tier' does not match",
        "should match pattern",
    ),
    Case(
        "tier-name-too-long", _set(_tier(0), "name", "a" * 41), "schema", "spec.tiers.0.name: ", "at most 40 characters"
    ),
    Case(
        "gpu-type-with-spaces",
        _set(lambda m: _tier(0)(m)["resources"], "gpuType", "NVIDIA A100-SXM4-80GB"),
        "schema",
        "spec.tiers.0.resources.gpuType: 'NVIDIA A100-SXM4-80GB' does not match",
        "should match pattern",
    ),
    Case(
        "cpu-not-a-quantity",
        _set(lambda m: _tier(0)(m)["resources"], "cpu", "4 cores"),
        "schema",
        "spec.tiers.0.resources.cpu: '4 cores' does not match",
        "should match pattern",
    ),
    Case(
        "fractional-cpu-as-number",
        _set(lambda m: _tier(0)(m)["resources"], "cpu", 0.5),
        "schema",
        "spec.tiers.0.resources.cpu: 0.5 is not of type 'integer', 'string'",
        "fractional quantity as a string",
    ),
    Case(
        "negative-gpus",
        _set(lambda m: _tier(0)(m)["resources"], "gpus", -1),
        "schema",
        "spec.tiers.0.resources.gpus: -1 is less than the minimum of 0",
        "greater than or equal to 0",
    ),
    Case(
        "unknown-toleration-operator",
        _set(lambda m: _tier(0)(m)["tolerations"][0], "operator", "In"),
        "schema",
        "spec.tiers.0.tolerations.0.operator: 'In' is not one of ['Exists', 'Equal']",
        "'Exists' or 'Equal'",
    ),
    # Cross-field rules: the schema alone accepts these; CEL refuses them.
    Case(
        "threshold-on-last-tier",
        _set(_tier(1), "accept", {"threshold": 0.9}),
        "cel",
        "spec: the last tier always answers and takes no accept rule",
        "always answers and takes no accept rule",
    ),
    Case(
        "missing-accept-before-last",
        _del(_tier(0), "accept"),
        "cel",
        "spec: every tier but the last needs an accept rule",
        "is not the last tier and needs an accept rule",
    ),
    Case(
        "duplicate-tier-names",
        _set(_tier(1), "name", "small"),
        "cel",
        "spec: tier names must be unique",
        "tier names must be unique; repeated: small",
    ),
    Case(
        "external-without-url",
        _set(_tier(1), "engine", "external"),
        "cel",
        "spec.tiers[1]: engine external needs the API's http(s) base URL as model.uri",
        "engine external needs an http(s) URL",
    ),
    Case(
        "classify-method-on-chat",
        _set(lambda m: _tier(0)(m)["accept"], "method", "maxProb"),
        "cel",
        "spec: accept.method must fit spec.task",
        "method 'maxProb' does not fit task 'chat'",
    ),
    Case(
        "generative-method-on-classify",
        _classify_with_default_method,
        "cel",
        "spec: accept.method must fit spec.task",
        "method 'geometricMean' does not fit task 'classify'",
    ),
    Case(
        "toleration-seconds-without-no-execute",
        _set(lambda m: _tier(0)(m)["tolerations"][0], "tolerationSeconds", 300),
        "cel",
        "spec.tiers[0].tolerations[0]: tolerationSeconds is allowed only with effect NoExecute",
        "tolerationSeconds is allowed only with effect NoExecute",
    ),
    # The loop: what cannot work is refused, never accepted and ignored.
    Case(
        "online-calibration-of-accuracy",
        _set(_spec, "calibration", {"minAccuracy": 0.9, "shadowSampleRate": 0.05}),
        "cel",
        "spec: spec.calibration.minAccuracy cannot be calibrated online",
        "cannot be calibrated online",
    ),
    Case(
        "online-calibration-in-early-mode",
        _online_in_early_mode,
        "cel",
        "spec: spec.calibration.shadowSampleRate needs whole answers",
        "needs whole answers to judge agreement",
    ),
    Case(
        "online-calibration-with-an-offline-matcher",
        _set(_spec, "calibration", {"minAgreement": 0.9, "shadowSampleRate": 0.05, "matcher": "code"}),
        "schema",
        "spec.calibration.matcher: 'code' is not one of ['label', 'number', 'exact', 'semantic', 'judge']",
        "judges offline only",
    ),
    Case(
        "a-judge-url-without-a-model",
        _set(_spec, "calibration", {"minAgreement": 0.9, "judge": {"url": "https://judge.example/v1"}}),
        "cel",
        "spec.calibration.judge: calibration.judge: url and model go together",
        "url and model go together",
    ),
    Case(
        "pre-route-weights-of-another-dimension",
        _set(
            _tier(0),
            "preRoute",
            {"dimensions": 16, "weights": PreRoute.encode_weights([0.5] * 8), "bias": 0.0, "skipBelow": 0.2},
        ),
        "cel",
        "spec.tiers[0].preRoute: preRoute.weights must be base64 of `dimensions`",
        "got 8 values for 16 dimensions",
    ),
    Case(
        "pre-route-on-the-last-tier",
        _set(
            _tier(-1),
            "preRoute",
            {"dimensions": 16, "weights": PreRoute.encode_weights([0.5] * 16), "bias": 0.0, "skipBelow": 0.2},
        ),
        "cel",
        "spec: the last tier answers whatever reaches it and takes no preRoute",
        "takes no preRoute",
    ),
    Case(
        "autoscaling-min-above-max",
        _set(_tier(0), "autoscaling", {"minReplicas": 3, "maxReplicas": 2, "targetPerReplica": 8}),
        "cel",
        "spec.tiers[0].autoscaling: autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        "minReplicas must not exceed",
    ),
    Case(
        "autoscaling-without-a-target",
        _set(_tier(0), "autoscaling", {"maxReplicas": 2}),
        "schema",
        "spec.tiers.0.autoscaling: 'targetPerReplica' is a required property",
        "targetPerReplica",
    ),
    Case(
        "autoscaling-an-external-tier",
        lambda m: m["spec"]["tiers"][0].update(
            engine="external",
            model={"uri": "https://api.example.com/v1"},
            autoscaling={"maxReplicas": 2, "targetPerReplica": 8},
        ),
        "cel",
        "spec.tiers[0]: engine external deploys nothing to scale",
        "takes no autoscaling",
    ),
    Case(
        "the-last-tier-to-zero-without-a-wait",
        _set(_tier(-1), "autoscaling", {"minReplicas": 0, "maxReplicas": 2, "targetPerReplica": 8}),
        "cel",
        "spec: the last tier answers whatever reaches it: autoscaling.minReplicas 0 on it needs",
        "needs autoscaling.coldStartWaitSeconds",
    ),
    Case(
        "a-cold-start-wait-before-the-last-tier",
        _set(
            _tier(0),
            "autoscaling",
            {"minReplicas": 0, "maxReplicas": 2, "targetPerReplica": 8, "coldStartWaitSeconds": 60},
        ),
        "cel",
        "spec: autoscaling.coldStartWaitSeconds is for the last tier at minReplicas 0 only",
        "for the last tier at minReplicas 0 only",
    ),
    Case(
        "threshold-bounds-reversed",
        _set(_spec, "calibration", {"minAgreement": 0.9, "minThreshold": 0.8, "maxThreshold": 0.5}),
        "cel",
        "spec: spec.calibration.minThreshold must not exceed",
        "minThreshold must not exceed",
    ),
    Case(
        "calibration-without-goal",
        _set(_spec, "calibration", {"confidence": 0.9}),
        "cel",
        "spec: spec.calibration needs a goal",
        "spec.calibration needs a goal",
    ),
    Case(
        "admission-without-a-slot",
        _set(lambda m: m["spec"]["router"], "admission", {"maxInFlightPerTier": 0}),
        "schema",
        "spec.router.admission.maxInFlightPerTier: 0 is less than the minimum of 1",
        "greater than or equal to 1",
    ),
    Case(
        "admission-a-negative-queue-on-a-tier",
        _set(_tier(-1), "admission", {"maxQueue": -1}),
        "schema",
        "spec.tiers.1.admission.maxQueue: -1 is less than the minimum of 0",
        "greater than or equal to 0",
    ),
    Case(
        "admission-no-queue-deadline",
        _set(lambda m: m["spec"]["router"], "admission", {"queueTimeoutSeconds": 0}),
        "schema",
        "spec.router.admission.queueTimeoutSeconds: 0 is less than or equal to the minimum of 0",
        "greater than 0",
    ),
    Case(
        "admission-an-unknown-policy",
        _set(lambda m: m["spec"]["router"], "admission", {"onEscalationFull": "drop"}),
        "schema",
        "spec.router.admission.onEscalationFull: 'drop' is not one of ['wait', 'keepSmall', 'reject']",
        "'wait', 'keepSmall' or 'reject'",
    ),
    # The learned score and the scored span.
    Case(
        "learned-without-parameters",
        _set(lambda m: _tier(0)(m)["accept"], "method", "learned"),
        "cel",
        "spec.tiers[0].accept: method learned needs its parameters",
        "method learned needs its parameters",
    ),
    Case(
        "learned-parameters-without-method",
        _set(lambda m: _tier(0)(m)["accept"], "learned", {"features": ["minProb"], "weights": [1.0]}),
        "cel",
        "spec.tiers[0].accept: method learned needs",
        "accept.learned is read by method learned only",
    ),
    Case(
        "learned-weights-miscounted",
        lambda m: _tier(0)(m)["accept"].update(
            method="learned", learned={"features": ["minProb", "meanProb"], "weights": [1.0]}
        ),
        "cel",
        "spec.tiers[0].accept: learned.weights needs exactly one weight per feature",
        "learned.weights needs exactly one weight per feature",
    ),
    Case(
        "learned-feature-of-another-task",
        lambda m: _tier(0)(m)["accept"].update(method="learned", learned={"features": ["maxProb"], "weights": [1.0]}),
        "cel",
        "spec: accept.learned.features must fit spec.task",
        "accept.learned.features must fit spec.task",
    ),
    Case(
        "span-on-classify",
        lambda m: (
            m["spec"].__setitem__("task", "classify"),
            _tier(0)(m)["accept"].update(method="maxProb", span="finalLine"),
        ),
        "cel",
        "spec: accept.span selects generated tokens",
        "accept.span selects generated tokens",
    ),
    Case(
        "final-line-in-early-mode",
        lambda m: (
            m["spec"]["router"].__setitem__("streaming", {"mode": "early"}),
            _tier(0)(m)["accept"].update(span="finalLine"),
        ),
        "cel",
        "spec: streaming mode early scores the answer's first tokens",
        "streaming mode early scores",
    ),
    Case(
        "escalation-log-with-nowhere-to-go",
        _set(_spec, "escalationLog", {"enabled": True}),
        "cel",
        "spec: spec.escalationLog.enabled needs spec.escalationLog.uri",
        "spec.escalationLog.enabled needs spec.escalationLog.uri",
    ),
    Case(
        "distillation-without-a-log",
        _set(_spec, "distillation", {"outputUri": "pvc://students/chat"}),
        "cel",
        "spec: spec.distillation needs spec.escalationLog.enabled",
        "spec.distillation needs spec.escalationLog",
    ),
    Case(
        "distillation-of-the-last-tier",
        lambda m: m["spec"].update(
            escalationLog={"enabled": True, "uri": "pvc://log/chat"},
            distillation={"outputUri": "pvc://students/chat", "tier": m["spec"]["tiers"][-1]["name"]},
        ),
        "cel",
        "spec: spec.distillation.tier must name a tier",
        "spec.distillation.tier must name a tier",
    ),
    Case(
        "on-policy-distillation-from-a-hosted-api",
        lambda m: (
            m["spec"].update(
                escalationLog={"enabled": True, "uri": "pvc://log/chat"},
                distillation={"outputUri": "pvc://students/chat", "training": {"onPolicyFraction": 0.5}},
            ),
            m["spec"]["tiers"][-1].update(engine="external", model={"uri": "https://api.example.com/v1"}),
        ),
        "cel",
        "spec: spec.distillation.training.onPolicyFraction > 0 needs",
        "onPolicyFraction > 0 needs a generative task",
    ),
    Case(
        "distillation-of-a-hosted-student",
        lambda m: (
            m["spec"].update(
                escalationLog={"enabled": True, "uri": "pvc://log/chat"},
                distillation={"outputUri": "pvc://students/chat"},
            ),
            m["spec"]["tiers"][0].update(engine="external", model={"uri": "https://api.example.com/v1"}),
        ),
        "cel",
        "spec: spec.distillation's student tier must be one Kascade deploys",
        "student tier must be one Kascade",
    ),
    Case(
        "distillation-schedule-not-cron",
        lambda m: m["spec"].update(
            escalationLog={"enabled": True, "uri": "pvc://log/chat"},
            distillation={"outputUri": "pvc://students/chat", "schedule": "every night"},
        ),
        "schema",
        "spec.distillation.schedule: 'every night' does not match",
        "should match pattern",
    ),
    Case(
        "distillation-to-s3",
        lambda m: m["spec"].update(
            escalationLog={"enabled": True, "uri": "pvc://log/chat"}, distillation={"outputUri": "s3://bucket/students"}
        ),
        "schema",
        "spec.distillation.outputUri: 's3://bucket/students' does not match",
        "should match pattern",
    ),
    Case(
        "distillation-without-an-output",
        lambda m: m["spec"].update(
            escalationLog={"enabled": True, "uri": "pvc://log/chat"}, distillation={"minSamples": 10}
        ),
        "schema",
        "spec.distillation: 'outputUri' is a required property",
        "outputUri",
    ),
    Case(
        "distillation-holding-every-example-out",
        lambda m: m["spec"].update(
            escalationLog={"enabled": True, "uri": "pvc://log/chat"},
            distillation={"outputUri": "pvc://students/chat", "training": {"heldOut": 1}},
        ),
        "schema",
        "spec.distillation.training.heldOut: 1 is greater than or equal to the maximum of 1",
        "Input should be less than 1",
    ),
]


def _bad(case: Case) -> dict[str, Any]:
    manifest = copy.deepcopy(GOOD)
    case.change(manifest)
    return manifest


def test_the_good_manifest_passes_everything() -> None:
    assert refusals(GOOD) == []
    ModelCascade.model_validate(GOOD)


def test_what_is_off_or_zero_is_accepted() -> None:
    """An escalation log that is off, GPU-hour prices and a NoExecute toleration with seconds work."""
    manifest = copy.deepcopy(GOOD)
    manifest["spec"]["escalationLog"] = {"enabled": False, "retentionDays": 7}
    manifest["spec"]["tiers"][0]["price"]["perGpuHour"] = 0
    manifest["spec"]["tiers"][1]["price"] = {"perGpuHour": 2.5}
    manifest["spec"]["tiers"][0]["tolerations"].append(
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}
    )
    assert refusals(manifest) == []
    ModelCascade.model_validate(manifest)


def test_autoscaled_tiers_are_accepted() -> None:
    """A tier before the last scales to zero; the last scales to zero only with its cold-start wait."""
    manifest = copy.deepcopy(GOOD)
    manifest["spec"]["tiers"][0]["autoscaling"] = {"minReplicas": 0, "maxReplicas": 4, "targetPerReplica": 8}
    manifest["spec"]["tiers"][1]["autoscaling"] = {"maxReplicas": 2, "targetPerReplica": 16}
    assert refusals(manifest) == []
    ModelCascade.model_validate(manifest)
    manifest["spec"]["tiers"][1]["autoscaling"].update(minReplicas=0, coldStartWaitSeconds=120)
    assert refusals(manifest) == []
    ModelCascade.model_validate(manifest)


def test_distillation_with_its_log_and_defaults_is_accepted() -> None:
    """A distilling cascade with its log, and onPolicyFraction 0 or left to its default, passes every rule."""
    manifest = copy.deepcopy(GOOD)
    manifest["spec"]["escalationLog"] = {"enabled": True, "uri": "pvc://log/chat"}
    manifest["spec"]["distillation"] = {
        "outputUri": "pvc://students/chat",
        "schedule": "0 3 * * *",
        "training": {"onPolicyFraction": 0},
    }
    assert refusals(manifest) == []
    ModelCascade.model_validate(manifest)
    del manifest["spec"]["distillation"]["training"]
    assert refusals(manifest) == []


def test_there_are_enough_kinds_of_bad_manifest() -> None:
    assert len(CASES) >= 12
    assert len({case.id for case in CASES}) == len(CASES)
    assert {case.refused_by for case in CASES} == {"schema", "cel"}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_server_refuses_it(case: Case) -> None:
    manifest = _bad(case)
    errors, failures = schema_errors(manifest), cel_failures(manifest) if "spec" in manifest else []
    if case.refused_by == "cel":
        assert errors == [], "a cross-field case must pass the schema, so that the CEL rule is what refuses it"
        assert any(case.server_says in failure for failure in failures), failures
    else:
        assert any(case.server_says in error for error in errors), errors


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_model_refuses_it_and_says_why(case: Case) -> None:
    with pytest.raises(ValidationError) as refused:
        ModelCascade.model_validate(_bad(case))
    assert case.model_says in str(refused.value)


def test_unknown_fields_are_pruned_by_a_lenient_server_and_refused_by_the_model() -> None:
    """Without strict field validation the server drops an unknown field silently; the model never does."""
    manifest = _bad(next(case for case in CASES if case.id == "unknown-field"))
    assert schema_errors(manifest, strict=False) == []
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ModelCascade.model_validate(manifest)


def test_cel_rules_also_hold_before_defaulting() -> None:
    """The rules read defaulted fields with their defaults, so they need no defaulting pass."""
    for case in CASES:
        if case.refused_by == "cel":
            assert cel_failures(_bad(case), defaults=False), case.id
    assert cel_failures(GOOD, defaults=False) == []


# --- the CRD and the model agree on generated cascades ------------------------

# Field-level mistakes are kept rare, so that most examples exercise the cross-field rules.
_NAMES = st.sampled_from(["small", "medium", "large", "xl", "huge"] * 3 + ["Bad_Name"])
_URIS = st.sampled_from(["hf://org/model", "pvc://models/small", "https://api.example.com/v1", "http://tgi:8080/v1"])
_METHODS = st.one_of(
    st.none(),
    st.sampled_from(["geometricMean", "minToken", "quantile", "margin", "entropy"]),
    st.sampled_from(["maxProb", "classMargin"]),
)
_MISTAKE = st.integers(0, 19).map(lambda n: n == 0)  # true one time in twenty


@st.composite
def _accept(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.integers(0, 3)) == 0:
        return None
    threshold = draw(st.sampled_from([-0.1, 1.2])) if draw(_MISTAKE) else draw(st.sampled_from([0, 0.5, 0.9, 1]))
    accept: dict[str, Any] = {"threshold": threshold}
    method = "bogus" if draw(_MISTAKE) else draw(_METHODS)
    if method is not None:
        accept["method"] = method
    return accept


@st.composite
def _tier_manifest(draw: st.DrawFn) -> dict[str, Any]:
    tier: dict[str, Any] = {"name": draw(_NAMES), "model": {"uri": draw(_URIS)}}
    engine = draw(st.sampled_from([None, None, "vllm", "transformers", "external"]))
    if engine is not None:
        tier["engine"] = engine
    replicas = -1 if draw(_MISTAKE) else draw(st.sampled_from([None, 0, 2]))
    if replicas is not None:
        tier["replicas"] = replicas
    accept = draw(_accept())
    if accept is not None:
        tier["accept"] = accept
    if draw(st.integers(0, 3)) == 0:
        scaling: dict[str, Any] = {"maxReplicas": draw(st.sampled_from([1, 2])), "targetPerReplica": 8}
        if (low := draw(st.sampled_from([None, 0, 1, 3]))) is not None:
            scaling["minReplicas"] = low
        if draw(st.booleans()):
            scaling["coldStartWaitSeconds"] = 60
        tier["autoscaling"] = scaling
    return tier


@st.composite
def _cascade(draw: st.DrawFn) -> dict[str, Any]:
    tiers = draw(st.lists(_tier_manifest(), min_size=0, max_size=4))
    if tiers and draw(st.integers(0, 2)) > 0:
        tiers[-1].pop("accept", None)  # most cascades get the last tier right
    spec: dict[str, Any] = {"tiers": tiers}
    task = draw(st.sampled_from([None, "chat", "completion", "classify"]))
    if task is not None:
        spec["task"] = task
    return {"apiVersion": "kascade.dev/v1alpha1", "kind": "ModelCascade", "metadata": {"name": "x"}, "spec": spec}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cascade())
def test_server_and_model_agree_on_generated_cascades(manifest: dict[str, Any]) -> None:
    try:
        ModelCascade.model_validate(manifest)
        model_accepts = True
    except ValidationError:
        model_accepts = False
    server_refusals = refusals(manifest)
    assert model_accepts == (server_refusals == []), server_refusals
