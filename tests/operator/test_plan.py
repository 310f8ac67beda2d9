"""The reconcile plan: create what is missing, patch what drifted, delete what is no longer wanted."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from kascade.api.modelcascade import ModelCascade
from kascade.operator.builders import build_children
from kascade.operator.labels import SPEC_HASH_ANNOTATION
from kascade.operator.plan import (
    ChildRef,
    Plan,
    child_key,
    index_children,
    plan_children,
)
from kascade.operator.settings import OperatorSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = OperatorSettings()


def cascade(**spec_changes: Any) -> ModelCascade:
    body = yaml.safe_load((EXAMPLES / "external-last-tier.yaml").read_text())
    body["spec"].update(spec_changes)
    return ModelCascade.model_validate(body)


def as_served(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns for an applied manifest: defaults, server metadata, status."""
    served = copy.deepcopy(manifest)
    served["metadata"].update(uid="u-1", resourceVersion="7", creationTimestamp="2025-01-01T00:00:00Z")
    served["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "kascade.dev/v1alpha1",
            "kind": "ModelCascade",
            "name": "support-bot",
            "uid": "owner",
            "controller": True,
        }
    ]
    if served["kind"] == "Deployment":
        served["spec"]["strategy"] = {"type": "RollingUpdate"}
        served["status"] = {"readyReplicas": 1}
    return served


def observe(manifests: list[dict[str, Any]]) -> dict:
    return index_children(as_served(m) for m in manifests)


def test_first_reconcile_creates_everything_in_order() -> None:
    desired = build_children(cascade(), SETTINGS)
    plan = plan_children(desired, {})
    assert [child_key(m) for m in plan.create] == [child_key(m) for m in desired]
    assert not plan.patch and not plan.delete and not plan.empty


def test_reconcile_of_an_unchanged_cascade_is_empty() -> None:
    desired = build_children(cascade(), SETTINGS)
    plan = plan_children(build_children(cascade(), SETTINGS), observe(desired))
    assert plan == Plan()
    assert plan.empty
    assert plan.summary() == "up to date"


def test_a_changed_tier_patches_only_its_deployment() -> None:
    observed = observe(build_children(cascade(), SETTINGS))
    changed = cascade()
    changed.spec.tiers[0].engine_args.append("--enable-prefix-caching")
    plan = plan_children(build_children(changed, SETTINGS), observed)
    assert [child_key(m) for m in plan.patch] == [("Deployment", "support-bot-small")]
    assert not plan.create and not plan.delete


def test_a_changed_threshold_patches_the_configmap_and_rolls_the_router() -> None:
    observed = observe(build_children(cascade(), SETTINGS))
    changed = cascade()
    assert changed.spec.tiers[0].accept is not None
    changed.spec.tiers[0].accept.threshold = 0.5
    plan = plan_children(build_children(changed, SETTINGS), observed)
    assert {child_key(m) for m in plan.patch} == {
        ("ConfigMap", "support-bot-router"),
        ("Deployment", "support-bot-router"),
    }


def test_manual_drift_on_an_object_is_patched_back() -> None:
    desired = build_children(cascade(), SETTINGS)
    observed = observe(desired)
    observed[("Service", "support-bot-small")]["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = "edited"
    observed[("ConfigMap", "support-bot-router")]["metadata"]["annotations"].pop(SPEC_HASH_ANNOTATION)
    plan = plan_children(desired, observed)
    assert {child_key(m) for m in plan.patch} == {
        ("Service", "support-bot-small"),
        ("ConfigMap", "support-bot-router"),
    }


def test_a_removed_tier_deletes_its_children() -> None:
    observed = observe(build_children(cascade(), SETTINGS))
    fewer = cascade()
    del fewer.spec.tiers[1]
    plan = plan_children(build_children(fewer, SETTINGS), observed)
    assert set(plan.delete) == {
        ChildRef("apps/v1", "Deployment", "support-bot-medium"),
        ChildRef("v1", "Service", "support-bot-medium"),
        ChildRef("policy/v1", "PodDisruptionBudget", "support-bot-medium"),
    }
    assert not plan.create


def test_a_deleted_child_is_recreated() -> None:
    desired = build_children(cascade(), SETTINGS)
    observed = observe(desired)
    del observed[("Deployment", "support-bot-router")]
    plan = plan_children(desired, observed)
    assert [child_key(m) for m in plan.create] == [("Deployment", "support-bot-router")]


def test_objects_that_are_not_ours_are_never_touched() -> None:
    desired = build_children(cascade(), SETTINGS)
    observed = observe(desired)
    foreign = observed[("Service", "support-bot-small")]
    foreign["metadata"]["labels"] = {"app": "someone-else"}
    other_cascade = as_served(build_children(cascade(), SETTINGS)[0])
    other_cascade["metadata"]["name"] = "another-router"
    other_cascade["metadata"]["labels"]["kascade.dev/cascade"] = "another"
    observed[child_key(other_cascade)] = other_cascade
    unlabelled = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "stray"}}
    observed[child_key(unlabelled)] = unlabelled
    plan = plan_children(desired, observed)
    assert plan.conflicts == (("Service", "support-bot-small"),)
    assert not plan.patch and not plan.delete and not plan.create


def test_plan_summary_names_every_action() -> None:
    observed = observe(build_children(cascade(), SETTINGS))
    fewer = cascade()
    del fewer.spec.tiers[1]
    fewer.spec.tiers[0].replicas = 5
    summary = plan_children(build_children(fewer, SETTINGS), observed).summary()
    assert "patch Deployment/support-bot-small" in summary
    assert "delete Deployment/support-bot-medium" in summary
