"""Autoscaled tiers: the ScaledObject or the HPA that scales them, their PodDisruptionBudgets, and no fight
between the reconcile and the autoscaler over `replicas`.

The HPA and the budgets pass Kubernetes' own schemas (kubernetes-validate
--strict); the ScaledObject passes KEDA's own CRD schema, fetched from KEDA's
Go module (`scripts/fetch-keda-crd.sh`, cached under ~/.cache/kascade/keda/).
"""

from __future__ import annotations

import copy
import functools
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kascade.api.modelcascade import ModelCascade
from kascade.operator.autoscaling_apis import ServedApis
from kascade.operator.build_autoscaling import (
    EXTERNAL_LOAD_METRIC,
    KEDA_EXCLUDED_LABELS_ANNOTATION,
    Autoscaler,
    build_scaled_object,
    build_tier_hpa,
    choose_autoscaler,
    tier_load_query,
)
from kascade.operator.builders import CHILD_KINDS, KEDA_CHILD_KINDS, build_children
from kascade.operator.conditions import tier_statuses
from kascade.operator.labels import common_labels, owned_selector
from kascade.operator.plan import index_children, plan_children
from kascade.operator.replacement import replacement
from kascade.operator.settings import OperatorSettings
from kascade.runtime.metrics import TIER_IN_FLIGHT, TIER_QUEUED, TIER_SKIPPED_NO_REPLICA
from kascade.testing.schema_validation import to_jsonschema

REPO = Path(__file__).resolve().parents[2]
SETTINGS = OperatorSettings(prometheus_address="http://prometheus.monitoring.svc:9090")
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def autoscaled(**small: Any) -> ModelCascade:
    """The GPU example with its small tier scaling between `minReplicas` (default 0) and 4, and its last tier 1-3."""
    body = yaml.safe_load((REPO / "examples" / "chat-vllm-gpu.yaml").read_text())
    body["spec"]["tiers"][0]["autoscaling"] = {"minReplicas": 0, "maxReplicas": 4, "targetPerReplica": 8, **small}
    body["spec"]["tiers"][-1]["autoscaling"] = {"maxReplicas": 3, "targetPerReplica": 16, "scaleDownDelaySeconds": 600}
    return ModelCascade.model_validate(body)


def of_kind(children: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {child["metadata"]["name"]: child for child in children if child["kind"] == kind}


# --- which autoscaler ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "keda", "external", "chosen"),
    [
        ("auto", True, True, Autoscaler.keda),
        ("auto", False, True, Autoscaler.hpa_external),
        ("auto", False, False, Autoscaler.hpa_cpu),
        ("keda", False, False, Autoscaler.keda),
        ("hpa", True, True, Autoscaler.hpa_external),
        ("hpa", False, False, Autoscaler.hpa_cpu),
    ],
)
def test_the_autoscaler_follows_the_setting_and_what_the_cluster_serves(
    setting: str, keda: bool, external: bool, chosen: Autoscaler
) -> None:
    settings = OperatorSettings(autoscaler=setting)
    assert choose_autoscaler(settings, keda=keda, external_metrics=external) is chosen
    assert ServedApis(keda=keda, external_metrics=external).autoscaler(settings) is chosen


def test_scaled_objects_are_listed_only_where_keda_serves_them() -> None:
    assert ServedApis(keda=False).child_kinds == CHILD_KINDS
    assert ServedApis(keda=True).child_kinds == (*CHILD_KINDS, *KEDA_CHILD_KINDS)


# --- the signal ------------------------------------------------------------------------------


def test_the_load_is_the_routers_in_flight_and_queued_for_that_tier() -> None:
    cascade = autoscaled()
    large = cascade.spec.tiers[-1]
    selector = f'{{namespace="llm",cascade="{cascade.metadata.name}",tier="large"}}'
    assert tier_load_query(cascade, large) == (
        f"(sum({TIER_IN_FLIGHT}{selector}) or vector(0)) + (sum({TIER_QUEUED}{selector}) or vector(0))"
    )


def test_a_tier_at_zero_wakes_on_requests_that_skipped_it_at_most_one_replica_s_worth() -> None:
    cascade = autoscaled()
    query = tier_load_query(cascade, cascade.spec.tiers[0])
    assert f'{TIER_SKIPPED_NO_REPLICA}_total{{namespace="llm",cascade="chat",tier="small"}}[2m]' in query
    assert query.endswith(", 1)") and "clamp_max(" in query
    # A tier that keeps a replica needs no wake-up term.
    keeps_one = autoscaled(minReplicas=1)
    assert TIER_SKIPPED_NO_REPLICA not in tier_load_query(keeps_one, keeps_one.spec.tiers[0])


# --- KEDA ------------------------------------------------------------------------------------


@functools.cache
def keda_scaled_object_schema() -> dict[str, Any]:
    """KEDA's ScaledObject schema (its CRD, from the Go module), as JSON Schema refusing unknown fields."""
    try:
        out = subprocess.run(
            ["bash", str(REPO / "scripts" / "fetch-keda-crd.sh")], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        if os.environ.get("KASCADE_REQUIRE_CONTROL_PLANE"):
            raise
        pytest.skip(f"KEDA's CRD could not be fetched (Go and the module proxy are needed): {error}")
    crd = yaml.safe_load(Path(out.strip().splitlines()[-1]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return to_jsonschema(version["schema"]["openAPIV3Schema"], refuse_unknown=True)


def keda_refusals(manifest: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(keda_scaled_object_schema())
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(manifest)]


@pytest.mark.slow  # runs scripts/fetch-keda-crd.sh (a cached file after the first run)
def test_the_scaled_object_passes_kedas_own_schema() -> None:
    cascade = autoscaled()
    for tier in cascade.spec.tiers:
        assert keda_refusals(build_scaled_object(cascade, tier, SETTINGS)) == []
    broken = build_scaled_object(cascade, cascade.spec.tiers[0], SETTINGS)
    broken["spec"]["minReplicas"] = 0  # KEDA spells it minReplicaCount: the schema must see the difference
    assert keda_refusals(broken) != []


def test_the_scaled_object_scales_the_tier_on_its_load_per_replica() -> None:
    cascade = autoscaled()
    scaled = build_scaled_object(cascade, cascade.spec.tiers[0], SETTINGS)
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-small"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (0, 4, 300)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": "http://prometheus.monitoring.svc:9090",
        "query": tier_load_query(cascade, cascade.spec.tiers[0]),
        "threshold": "8",
        "activationThreshold": "0",
    }


def test_kedas_own_hpa_is_never_taken_for_a_child_of_the_cascade() -> None:
    """KEDA copies the ScaledObject's labels onto its HPA, except those the annotation names: ours."""
    cascade = autoscaled()
    scaled = build_scaled_object(cascade, cascade.spec.tiers[0], SETTINGS)
    excluded = scaled["metadata"]["annotations"][KEDA_EXCLUDED_LABELS_ANNOTATION].split(",")
    keda_hpa_labels = {"app.kubernetes.io/managed-by": "keda-operator"}
    keda_hpa_labels |= {k: v for k, v in scaled["metadata"]["labels"].items() if k not in excluded}
    assert not all(keda_hpa_labels.get(key) == value for key, value in owned_selector("chat").items())


# --- HPA -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("autoscaler", [Autoscaler.hpa_external, Autoscaler.hpa_cpu])
def test_the_hpa_passes_kubernetes_validate_strict(autoscaler: Autoscaler, version: str) -> None:
    cascade = autoscaled()
    for tier in cascade.spec.tiers:
        kubernetes_validate.validate(build_tier_hpa(cascade, tier, SETTINGS, autoscaler), version, strict=True)


def test_the_hpa_reads_the_routers_load_through_the_external_metrics_api() -> None:
    cascade = autoscaled()
    hpa = build_tier_hpa(cascade, cascade.spec.tiers[-1], SETTINGS, Autoscaler.hpa_external)
    spec = hpa["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 3)
    assert spec["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 600}}
    (metric,) = spec["metrics"]
    assert metric["external"]["metric"] == {
        "name": EXTERNAL_LOAD_METRIC,
        "selector": {"matchLabels": {"cascade": "chat", "tier": "large"}},
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "16"}


def test_an_hpa_keeps_one_replica_of_a_tier_that_would_scale_to_zero_and_falls_back_to_cpu() -> None:
    cascade = autoscaled()
    hpa = build_tier_hpa(cascade, cascade.spec.tiers[0], OperatorSettings(hpa_cpu_utilization=60), Autoscaler.hpa_cpu)
    assert hpa["spec"]["minReplicas"] == 1
    assert hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}
    ]


# --- the children ----------------------------------------------------------------------------


def test_each_autoscaled_tier_gets_its_autoscaler_and_every_component_a_budget() -> None:
    children = build_children(autoscaled(), SETTINGS, autoscaler=Autoscaler.keda)
    assert sorted(of_kind(children, "ScaledObject")) == ["chat-large", "chat-small"]
    assert of_kind(children, "HorizontalPodAutoscaler") == {}
    assert sorted(of_kind(children, "PodDisruptionBudget")) == ["chat-large", "chat-router", "chat-small"]
    hpas = of_kind(build_children(autoscaled(), SETTINGS), "HorizontalPodAutoscaler")  # no KEDA: HPAs
    assert sorted(hpas) == ["chat-large", "chat-small"]
    plain = ModelCascade.model_validate(yaml.safe_load((REPO / "examples" / "chat-vllm-gpu.yaml").read_text()))
    assert not {"ScaledObject", "HorizontalPodAutoscaler"} & {c["kind"] for c in build_children(plain, SETTINGS)}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_budgets_take_one_pod_at_a_time_of_what_their_deployment_runs(version: str) -> None:
    children = build_children(autoscaled(), SETTINGS)
    deployments = of_kind(children, "Deployment")
    for name, budget in of_kind(children, "PodDisruptionBudget").items():
        kubernetes_validate.validate(budget, version, strict=True)
        assert budget["spec"]["maxUnavailable"] == 1
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        pods = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= pods.items()
    assert of_kind(children, "PodDisruptionBudget")["chat-router"]["metadata"]["labels"] == common_labels(
        "chat", "router"
    )


def test_an_autoscaled_tier_s_deployment_leaves_replicas_to_its_autoscaler() -> None:
    deployments = of_kind(build_children(autoscaled(), SETTINGS), "Deployment")
    assert "replicas" not in deployments["chat-small"]["spec"]
    assert "replicas" not in deployments["chat-large"]["spec"]
    assert deployments["chat-router"]["spec"]["replicas"] == 2


def as_observed(manifest: dict[str, Any], **spec: Any) -> dict[str, Any]:
    observed = copy.deepcopy(manifest)
    observed["metadata"].update(uid=f"u-{manifest['metadata']['name']}", resourceVersion="7")
    if spec:
        observed["spec"].update(spec)
    return observed


def test_a_reconcile_does_not_reset_the_replicas_an_autoscaler_set() -> None:
    """The autoscaler moved the small tier to 3: an unchanged spec writes nothing, a changed one keeps 3."""
    before = build_children(autoscaled(), SETTINGS)
    observed = index_children(
        as_observed(child, replicas=3)
        if child["kind"] == "Deployment" and child["metadata"]["name"] == "chat-small"
        else as_observed(child)
        for child in before
    )
    assert plan_children(before, observed).empty
    changed = autoscaled()
    changed.spec.tiers[0].engine_args = ["--max-num-seqs", "64"]
    plan = plan_children(build_children(changed, SETTINGS), observed)
    (patched,) = [m for m in plan.patch if m["kind"] == "Deployment"]
    body = replacement(patched, observed[("Deployment", "chat-small")])
    assert body["spec"]["replicas"] == 3
    assert "--max-num-seqs" in body["spec"]["template"]["spec"]["containers"][0]["args"]


def test_a_tier_that_stops_autoscaling_gets_its_replicas_back_and_loses_its_autoscaler() -> None:
    observed = index_children(map(as_observed, build_children(autoscaled(), SETTINGS)))
    body = yaml.safe_load((REPO / "examples" / "chat-vllm-gpu.yaml").read_text())
    body["spec"]["tiers"][0]["replicas"] = 2
    plan = plan_children(build_children(ModelCascade.model_validate(body), SETTINGS), observed)
    deployment = next(m for m in plan.patch if m["metadata"]["name"] == "chat-small")
    assert replacement(deployment, observed[("Deployment", "chat-small")])["spec"]["replicas"] == 2
    assert {(ref.kind, ref.name) for ref in plan.delete} == {
        ("HorizontalPodAutoscaler", "chat-small"),
        ("HorizontalPodAutoscaler", "chat-large"),
    }


def test_keda_installed_later_replaces_the_hpa_with_a_scaled_object() -> None:
    observed = index_children(map(as_observed, build_children(autoscaled(), SETTINGS)))
    plan = plan_children(build_children(autoscaled(), SETTINGS, autoscaler=Autoscaler.keda), observed)
    assert sorted(m["metadata"]["name"] for m in plan.create if m["kind"] == "ScaledObject") == [
        "chat-large",
        "chat-small",
    ]
    assert {ref.kind for ref in plan.delete} == {"HorizontalPodAutoscaler"}


def test_a_tier_scaled_to_zero_serves_and_an_autoscaled_tier_wants_what_its_autoscaler_set() -> None:
    def served(child: dict[str, Any]) -> dict[str, Any]:
        name = child["metadata"]["name"]
        if child["kind"] != "Deployment" or name == "chat-router":
            return as_observed(child)
        replicas = {"chat-small": 0, "chat-large": 3}[name]
        return {**as_observed(child, replicas=replicas), "status": {"readyReplicas": replicas}}

    observed = index_children(map(served, build_children(autoscaled(), SETTINGS)))
    small, large = tier_statuses(autoscaled(), observed)
    assert (small.ready, small.replicas, small.ready_replicas) == (True, 0, 0)
    assert (large.ready, large.replicas, large.ready_replicas) == (None, 3, 3)
    # A tier that must keep a replica and has none is not ready, autoscaled or not.
    keeps_one = autoscaled(minReplicas=1)
    small, _ = tier_statuses(keeps_one, observed)
    assert small.ready is None and small.ready_replicas == 0
