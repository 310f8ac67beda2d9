"""The CustomResourceDefinition of Distillation, generated from `kascade.api.distillation` like the ModelCascade's.

`kascade crds` writes it beside the ModelCascade's (`kascade.api.crd.render_crds`).
The cross-field rules are restated in CEL so that the API server refuses a bad
run itself; `kubectl get distillations` shows the cascade, phase, progress, the
gate's gain and whether the student was promoted.
"""

from __future__ import annotations

from typing import Any

from kascade.api.crd import CATEGORIES, TOLERATION_RULES
from kascade.api.distillation import (
    DISTILLATION_KIND,
    DISTILLATION_PLURAL,
    ON_POLICY_NEEDS_A_TEACHER,
    DistillationSpec,
    DistillationStatus,
)
from kascade.api.modelcascade import GROUP, VERSION
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
    {"rule": "self == oldSelf", "message": "a Distillation's spec cannot change once created: create a new run"},
]

DISTILLATION_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Cascade", "type": "string", "jsonPath": ".spec.cascade", "description": "The cascade it may promote into."},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Pending, Running, Succeeded, Failed."},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progressText", "description": "Steps done of all."},
    {"name": "Gain", "type": "string", "jsonPath": ".status.gainText",
     "description": "Held-out agreement gain of the new student over the one it started from."},
    {"name": "Promoted", "type": "string", "jsonPath": ".status.promotion.reason",
     "description": "Promoted, or why not (GateFailed, RunFailed, StudentChanged)."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]  # fmt: skip


def build_distillation_schema() -> dict[str, Any]:
    spec = to_structural(DistillationSpec.model_json_schema(by_alias=True))
    spec["x-kubernetes-validations"] = DISTILLATION_SPEC_RULES
    spec["properties"]["tolerations"]["items"]["x-kubernetes-validations"] = TOLERATION_RULES
    status = to_structural(DistillationStatus.model_json_schema(by_alias=True))
    return {
        "type": "object",
        "description": "One distillation run: a student taught from a cascade's escalations, judged by a promotion gate.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"{GROUP}/{VERSION}"},
            "kind": {"type": "string", "description": DISTILLATION_KIND},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def build_distillation_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{DISTILLATION_PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "kascade"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": DISTILLATION_KIND,
                "listKind": f"{DISTILLATION_KIND}List",
                "plural": DISTILLATION_PLURAL,
                "singular": DISTILLATION_KIND.lower(),
                "shortNames": DISTILLATION_SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": DISTILLATION_PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": build_distillation_schema()},
                }
            ],
        },
    }
