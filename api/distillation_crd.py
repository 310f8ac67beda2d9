"""The CustomResourceDefinition of Distillation, generated from `kascade.api.distillation` like the ModelCascade's.

`kascade crds` writes it beside the ModelCascade's (`kascade.api.crd_files.render_crds`).
The cross-field rules are restated in CEL so that the API server refuses a bad
run itself; `kubectl get distillations` shows the cascade, phase, progress, the
gate's gain and whether the student was promoted.
"""

from __future__ import annotations

from typing import Any

from kascade.api.crd import JUDGE_RULES, TOLERATION_RULES, custom_resource_definition, resource_schema
from kascade.api.distillation import (
    DISTILLATION_KIND,
    DISTILLATION_PLURAL,
    ON_POLICY_NEEDS_A_TEACHER,
    OUTPUT_IS_NOT_THE_STUDENT,
    DistillationSpec,
    DistillationStatus,
    PromotionReason,
)
from kascade.api.modelcascade import GROUP
from kascade.api.openapi import to_structural

DISTILLATION_CRD_FILE = f"{GROUP}_{DISTILLATION_PLURAL}.yaml"
DISTILLATION_SHORT_NAMES = ["dist"]


DISTILLATION_SPEC_RULES: list[dict[str, str]] = [
    {
        "rule": (
            "!has(self.training) || !has(self.training.onPolicyFraction) || double(self.training.onPolicyFraction) == 0.0 || "
            "(has(self.teacherUrl) && has(self.teacherModel))"
        ),
        "message": ON_POLICY_NEEDS_A_TEACHER,
    },
    {"rule": "self.output != self.student", "message": OUTPUT_IS_NOT_THE_STUDENT},
    {"rule": "self == oldSelf", "message": "a Distillation's spec cannot change once created: create a new run"},
]

DISTILLATION_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Cascade",
        "type": "string",
        "jsonPath": ".spec.cascade",
        "description": "The cascade it may promote into.",
    },
    {
        "name": "Phase",
        "type": "string",
        "jsonPath": ".status.phase",
        "description": "Pending, Running, Succeeded, Failed.",
    },
    {"name": "Progress", "type": "string", "jsonPath": ".status.progressText", "description": "Steps done of all."},
    {
        "name": "Gain",
        "type": "string",
        "jsonPath": ".status.gainText",
        "description": "Held-out agreement gain of the new student over the one it started from.",
    },
    {
        "name": "Promoted",
        "type": "string",
        "jsonPath": ".status.promotion.reason",
        "description": "Promoted, or why not: "
        + ", ".join(r.value for r in PromotionReason if r.value != "Promoted")
        + ".",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_distillation_schema() -> dict[str, Any]:
    spec = to_structural(DistillationSpec.model_json_schema(by_alias=True))
    spec["x-kubernetes-validations"] = DISTILLATION_SPEC_RULES
    spec["properties"]["tolerations"]["items"]["x-kubernetes-validations"] = TOLERATION_RULES
    spec["properties"]["judge"]["x-kubernetes-validations"] = JUDGE_RULES
    status = to_structural(DistillationStatus.model_json_schema(by_alias=True))
    description = "One distillation run: a student taught from a cascade's escalations, judged by a promotion gate."
    return resource_schema(kind=DISTILLATION_KIND, description=description, spec=spec, status=status)


def build_distillation_crd() -> dict[str, Any]:
    return custom_resource_definition(
        kind=DISTILLATION_KIND,
        plural=DISTILLATION_PLURAL,
        singular=DISTILLATION_KIND.lower(),
        short_names=DISTILLATION_SHORT_NAMES,
        printer_columns=DISTILLATION_PRINTER_COLUMNS,
        schema=build_distillation_schema(),
    )
