"""The CustomResourceDefinition of ModelCascade, generated from the pydantic models.

`kascade crds` writes it to `crds/` (and, with `--out charts/kascade/crds`, to the
chart's copy; `kascade.api.crd_files`); tests fail when either folder is stale. The
schema comes from `ModelCascadeSpec` and `ModelCascadeStatus` (converted to a
structural schema by `kascade.api.openapi`); the cross-field rules of
`ModelCascadeSpec._check_tiers` are restated here in CEL, so that the API server
refuses a bad cascade itself instead of the operator finding out later.
"""

from __future__ import annotations

from typing import Any

from kascade.api.agreement import JUDGE_URL_NEEDS_A_MODEL
from kascade.api.autoscaling import AUTOSCALING_RULES, AUTOSCALING_SPEC_RULES, EXTERNAL_TIER_IS_NOT_SCALED
from kascade.api.loop import (
    CALIBRATION_NEEDS_A_GOAL,
    DISTILLATION_NEEDS_THE_LOG,
    DISTILLATION_TIER_NOT_LAST,
    ESCALATION_LOG_NEEDS_A_PLACE,
    ON_POLICY_NEEDS_A_SCORING_TEACHER,
    ONLINE_CALIBRATION_HAS_NO_REFERENCES,
    ONLINE_CALIBRATION_NEEDS_WHOLE_ANSWERS,
    STUDENT_MUST_BE_TRAINABLE,
    THRESHOLD_BOUNDS_IN_ORDER,
)
from kascade.api.modelcascade import (
    CLASSIFY_FEATURES,
    CLASSIFY_METHODS,
    EARLY_MODE_SCORES_A_PREFIX,
    FEATURES_FIT_TASK,
    GENERATIVE_METHODS,
    GROUP,
    KIND,
    LEARNED_NEEDS_PARAMETERS,
    LEARNED_ONLY_WITH_METHOD,
    LEARNED_WEIGHTS_PER_FEATURE,
    PLURAL,
    SPAN_NEEDS_TOKENS,
    TOKEN_FEATURES,
    TOLERATION_SECONDS_NEED_NO_EXECUTE,
    VERSION,
    Accept,
    ConfidenceMethod,
    EngineKind,
    ModelCascadeSpec,
    Task,
)
from kascade.api.openapi import to_structural
from kascade.api.pre_route import LAST_TIER_IS_NOT_PRE_ROUTED, PRE_ROUTE_WEIGHTS_PER_DIMENSION
from kascade.api.status import ModelCascadeStatus

SINGULAR = "modelcascade"
# Not "mc": OpenShift names MachineConfig so, and kubectl would resolve it to whichever it finds first.
SHORT_NAMES = ["mcas"]
CATEGORIES = ["kascade"]


def _cel_list(values: list[str]) -> str:
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


_LAST_TIER = "self.tiers[size(self.tiers) - 1]"
# Fields with a default may be absent when a rule runs (the server defaults them first,
# but other evaluators need not), so each rule reads them with its default.
_TASK = f"(has(self.task) ? self.task : '{ModelCascadeSpec.model_fields['task'].default.value}')"
_METHOD = f"(has(t.accept.method) ? t.accept.method : '{Accept.model_fields['method'].default.value}')"

# CEL rules on `spec`, mirroring ModelCascadeSpec._check_tiers. The lists they walk
# are bounded (tiers: maxItems 8, names: maxLength 40), which keeps their cost low.
SPEC_RULES: list[dict[str, str]] = [
    {
        "rule": "self.tiers.all(t, self.tiers.exists_one(u, u.name == t.name))",
        "message": "tier names must be unique",
    },
    {
        "rule": f"size(self.tiers) == 0 || !has({_LAST_TIER}.accept)",
        "message": "the last tier always answers and takes no accept rule",
    },
    {
        "rule": f"size(self.tiers) == 0 || !has({_LAST_TIER}.preRoute)",
        "message": f"the last tier {LAST_TIER_IS_NOT_PRE_ROUTED}",
    },
    {
        "rule": f"self.tiers.all(t, has(t.accept) || t.name == {_LAST_TIER}.name)",
        "message": "every tier but the last needs an accept rule (method and threshold)",
    },
    {
        "rule": (
            f"self.tiers.all(t, !has(t.accept) || "
            f"({_METHOD} in {_cel_list(sorted(m.value for m in CLASSIFY_METHODS))} && {_TASK} == '{Task.classify.value}') || "
            f"({_METHOD} in {_cel_list(sorted(m.value for m in GENERATIVE_METHODS))} && {_TASK} != '{Task.classify.value}'))"
        ),
        "message": (
            "accept.method must fit spec.task: maxProb, classMargin or learned for task classify; "
            "geometricMean, minToken, quantile, margin, entropy or learned for chat and completion"
        ),
    },
    {
        "rule": (
            f"{_TASK} != '{Task.classify.value}' || "
            "self.tiers.all(t, !has(t.accept) || !has(t.accept.span) || t.accept.span == 'all')"
        ),
        "message": SPAN_NEEDS_TOKENS,
    },
    {
        "rule": (
            "self.tiers.all(t, !has(t.accept) || !has(t.accept.learned) || t.accept.learned.features.all(f, "
            f"({_TASK} == '{Task.classify.value}' && f in {_cel_list(sorted(f.value for f in CLASSIFY_FEATURES))}) || "
            f"({_TASK} != '{Task.classify.value}' && f in {_cel_list(sorted(f.value for f in TOKEN_FEATURES))})))"
        ),
        "message": FEATURES_FIT_TASK,
    },
    {
        "rule": (
            "!has(self.router) || !has(self.router.streaming) || !has(self.router.streaming.mode) || "
            "self.router.streaming.mode != 'early' || self.tiers.all(t, !has(t.accept) || "
            "((!has(t.accept.span) || !(t.accept.span in ['finalCodeBlock', 'finalLine'])) && "
            "(!has(t.accept.learned) || !('logPromptTokens' in t.accept.learned.features))))"
        ),
        "message": EARLY_MODE_SCORES_A_PREFIX,
    },
]

# CEL rules on `spec.calibration.judge`, mirroring Judge's validator.
JUDGE_RULES: list[dict[str, str]] = [{"rule": "has(self.url) == has(self.model)", "message": JUDGE_URL_NEEDS_A_MODEL}]

# CEL rules on `spec.tiers[].preRoute`, mirroring PreRoute's validator: the base64 length of 4-byte weights.
PRE_ROUTE_RULES: list[dict[str, str]] = [
    {"rule": "size(self.weights) == 4 * ((4 * self.dimensions + 2) / 3)", "message": PRE_ROUTE_WEIGHTS_PER_DIMENSION}
]

# CEL rules on `spec.tiers[].accept`, mirroring Accept's and LearnedScore's validators.
ACCEPT_RULES: list[dict[str, str]] = [
    {
        "rule": f"(has(self.method) && self.method == '{ConfidenceMethod.learned.value}') == has(self.learned)",
        "message": f"{LEARNED_NEEDS_PARAMETERS}; {LEARNED_ONLY_WITH_METHOD}",
    },
    {
        "rule": "!has(self.learned) || size(self.learned.weights) == size(self.learned.features)",
        "message": LEARNED_WEIGHTS_PER_FEATURE,
    },
]

# What this version declares but does not implement is refused (`kascade.api.loop`).
SPEC_RULES += [
    {
        "rule": (
            "!has(self.calibration) || !has(self.calibration.shadowSampleRate) || "
            "double(self.calibration.shadowSampleRate) == 0.0 || !has(self.calibration.minAccuracy)"
        ),
        "message": ONLINE_CALIBRATION_HAS_NO_REFERENCES,
    },
    {
        "rule": (
            "!has(self.calibration) || !has(self.calibration.minThreshold) || !has(self.calibration.maxThreshold) || "
            "double(self.calibration.minThreshold) <= double(self.calibration.maxThreshold)"
        ),
        "message": THRESHOLD_BOUNDS_IN_ORDER,
    },
    {
        "rule": (
            "!has(self.calibration) || !has(self.calibration.shadowSampleRate) || "
            "double(self.calibration.shadowSampleRate) == 0.0 || !has(self.router) || !has(self.router.streaming) || "
            "!has(self.router.streaming.mode) || self.router.streaming.mode != 'early'"
        ),
        "message": ONLINE_CALIBRATION_NEEDS_WHOLE_ANSWERS,
    },
    {
        "rule": (
            "!has(self.calibration) || has(self.calibration.minAgreement) || "
            "has(self.calibration.minAccuracy) || has(self.calibration.maxEscalationRate)"
        ),
        "message": CALIBRATION_NEEDS_A_GOAL,
    },
    {
        "rule": (
            "!has(self.escalationLog) || !has(self.escalationLog.enabled) || !self.escalationLog.enabled || "
            "(has(self.escalationLog.uri) && size(self.escalationLog.uri) > 0)"
        ),
        "message": ESCALATION_LOG_NEEDS_A_PLACE,
    },
    {
        "rule": (
            "!has(self.distillation) || (has(self.escalationLog) && has(self.escalationLog.enabled) && "
            "self.escalationLog.enabled && has(self.escalationLog.uri) && size(self.escalationLog.uri) > 0)"
        ),
        "message": DISTILLATION_NEEDS_THE_LOG,
    },
    {
        "rule": (
            "!has(self.distillation) || !has(self.distillation.tier) || "
            "self.tiers.exists(t, t.name == self.distillation.tier && t.name != self.tiers[size(self.tiers) - 1].name)"
        ),
        "message": DISTILLATION_TIER_NOT_LAST,
    },
    {
        "rule": (
            "!has(self.distillation) || !has(self.distillation.training) || "
            "!has(self.distillation.training.onPolicyFraction) || "
            f"double(self.distillation.training.onPolicyFraction) == 0.0 || ({_TASK} != 'classify' && "
            f"(has({_LAST_TIER}.engine) ? {_LAST_TIER}.engine : 'vllm') != 'external')"
        ),
        "message": ON_POLICY_NEEDS_A_SCORING_TEACHER,
    },
    {
        "rule": (
            "!has(self.distillation) || self.tiers.all(t, t.name != (has(self.distillation.tier) ? "
            "self.distillation.tier : self.tiers[0].name) || ((has(t.engine) ? t.engine : 'vllm') != 'external' "
            "&& !t.model.uri.startsWith('s3://')))"
        ),
        "message": STUDENT_MUST_BE_TRAINABLE,
    },
]

# CEL rules on each item of `spec.tiers[].tolerations`, mirroring Toleration's validator.
TOLERATION_RULES: list[dict[str, str]] = [
    {
        "rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "message": TOLERATION_SECONDS_NEED_NO_EXECUTE,
    },
]

SPEC_RULES += AUTOSCALING_SPEC_RULES

# CEL rules on each item of `spec.tiers`.
TIER_RULES: list[dict[str, str]] = [
    {
        "rule": f"!has(self.autoscaling) || !has(self.engine) || self.engine != '{EngineKind.external.value}'",
        "message": EXTERNAL_TIER_IS_NOT_SCALED,
    },
    {
        "rule": (
            f"!has(self.engine) || self.engine != '{EngineKind.external.value}' || "
            "self.model.uri.startsWith('http://') || self.model.uri.startsWith('https://')"
        ),
        "message": "engine external needs the API's http(s) base URL as model.uri",
    },
]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Whether the cascade serves requests.",
    },
    {
        "name": "Tiers",
        "type": "string",
        "jsonPath": ".status.summary.tiers",
        "description": "Ready tiers out of all tiers.",
    },
    {
        "name": "Escalation",
        "type": "string",
        "jsonPath": ".status.summary.escalation",
        "description": "Share of requests the small tiers passed on.",
    },
    {
        "name": "Saved",
        "type": "string",
        "jsonPath": ".status.summary.saved",
        "description": "Money saved against sending every request to the last tier.",
    },
    {
        "name": "Reserved",
        "type": "string",
        "jsonPath": ".status.summary.reserved",
        "description": "What the tiers' ready GPUs cost at price.perGpuHour, and their GPU-hours.",
    },
    {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    },
    {
        "name": "Net",
        "type": "string",
        "jsonPath": ".status.summary.netSaved",
        "description": "Saved, less what the tiers before the last reserved (GPU-hours at their price).",
        "priority": 1,
    },
    {
        "name": "Endpoint",
        "type": "string",
        "jsonPath": ".status.endpoint",
        "description": "The cascade's OpenAI-compatible base URL.",
        "priority": 1,
    },
]


def build_openapi_schema() -> dict[str, Any]:
    """The `openAPIV3Schema` of ModelCascade: structural, strict, with CEL rules."""
    spec = to_structural(ModelCascadeSpec.model_json_schema(by_alias=True))
    spec["x-kubernetes-validations"] = SPEC_RULES
    spec["properties"]["tiers"]["items"]["x-kubernetes-validations"] = TIER_RULES
    spec["properties"]["tiers"]["items"]["properties"]["accept"]["x-kubernetes-validations"] = ACCEPT_RULES
    spec["properties"]["tiers"]["items"]["properties"]["preRoute"]["x-kubernetes-validations"] = PRE_ROUTE_RULES
    spec["properties"]["tiers"]["items"]["properties"]["autoscaling"]["x-kubernetes-validations"] = AUTOSCALING_RULES
    spec["properties"]["tiers"]["items"]["properties"]["tolerations"]["items"]["x-kubernetes-validations"] = (
        TOLERATION_RULES
    )
    spec["properties"]["distillation"]["properties"]["tolerations"]["items"]["x-kubernetes-validations"] = (
        TOLERATION_RULES
    )
    spec["properties"]["calibration"]["properties"]["judge"]["x-kubernetes-validations"] = JUDGE_RULES
    status = to_structural(ModelCascadeStatus.model_json_schema(by_alias=True))
    description = (
        "A model cascade: a small model answers first; when it is not confident, "
        "the request escalates to a larger one. The last tier always answers."
    )
    return resource_schema(kind=KIND, description=description, spec=spec, status=status)


def resource_schema(*, kind: str, description: str, spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """The `openAPIV3Schema` of a resource: apiVersion, kind, metadata, its spec (required) and status."""
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"{GROUP}/{VERSION}"},
            "kind": {"type": "string", "description": kind},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def custom_resource_definition(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: list[str],
    printer_columns: list[dict[str, Any]],
    schema: dict[str, Any],
) -> dict[str, Any]:
    """A namespaced CustomResourceDefinition (apiextensions.k8s.io/v1) of Kascade's group: one version, a status."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "kascade"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def build_crd() -> dict[str, Any]:
    """The ModelCascade CustomResourceDefinition as a plain dict."""
    return custom_resource_definition(
        kind=KIND,
        plural=PLURAL,
        singular=SINGULAR,
        short_names=SHORT_NAMES,
        printer_columns=PRINTER_COLUMNS,
        schema=build_openapi_schema(),
    )
