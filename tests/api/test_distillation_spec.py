"""A Distillation's gate judges with a matcher a run can use: the model and the CRD refuse the offline-only ones."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml
from crd_testkit import CRDS, to_jsonschema
from pydantic import ValidationError

from kascade.api.agreement import ONLINE_MATCHERS
from kascade.api.distillation import Distillation


def run(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kascade.dev/v1alpha1",
        "kind": "Distillation",
        "metadata": {"name": "chat-d1", "namespace": "llm"},
        "spec": {
            "cascade": "chat",
            "tier": "small",
            "student": "pvc://models/small",
            "data": "pvc://escalations/chat",
            "output": "pvc://students/chat/chat-d1",
            **spec,
        },
    }


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    crd = yaml.safe_load((CRDS / "kascade.dev_distillations.yaml").read_text())
    schema = to_jsonschema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    return [error.message for error in jsonschema.Draft202012Validator(schema).iter_errors(manifest)]


def test_a_run_judged_by_number_is_accepted_and_one_judged_by_code_refused_by_both() -> None:
    assert schema_errors(run(matcher="number")) == []
    assert Distillation.model_validate(run(matcher="number")).spec.matcher == "number"
    assert any("'code' is not one of" in error for error in schema_errors(run(matcher="code")))
    with pytest.raises(ValidationError, match="matcher code judges offline only"):
        Distillation.model_validate(run(matcher="code"))


def test_the_new_training_fields_are_checked_by_the_crd_as_by_the_model() -> None:
    bad = run(training={"loraRank": 0, "evalEvery": 0})
    assert len(schema_errors(bad)) == 2
    with pytest.raises(ValidationError, match="2 validation errors"):
        Distillation.model_validate(bad)
    crd = yaml.safe_load((CRDS / "kascade.dev_distillations.yaml").read_text())
    matcher = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["matcher"]
    assert matcher["enum"] == list(ONLINE_MATCHERS) and matcher["default"] == "exact"
