"""Tier readiness, conditions and the semantic checks the CRD schema cannot do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kascade.api.modelcascade import Condition, ModelCascade, ModelCascadeStatus
from kascade.api.summary import summarize_status
from kascade.operator.conditions import (
    DEGRADED,
    READY,
    ROUTER_READY,
    TIERS_READY,
    Problem,
    ProblemReason,
    compute_health,
    invalid_spec_conditions,
    merge_conditions,
)
from kascade.operator.problems import check_semantics

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
T0 = "2025-01-01T00:00:00Z"
T1 = "2025-01-01T00:05:00Z"


def example(name: str, **spec_changes: Any) -> ModelCascade:
    body = yaml.safe_load((EXAMPLES / name).read_text())
    body["spec"].update(spec_changes)
    return ModelCascade.model_validate(body)


def deployments(**ready: int) -> dict:
    """Observed Deployments by name with their readyReplicas."""
    return {
        ("Deployment", name.replace("_", "-")): {"kind": "Deployment", "status": {"readyReplicas": count}}
        for name, count in ready.items()
    }


def by_type(conditions: list[Condition]) -> dict[str, Condition]:
    return {c.type: c for c in conditions}


def test_everything_ready() -> None:
    cascade = example("external-last-tier.yaml")
    health = compute_health(
        cascade, deployments(support_bot_small=2, support_bot_medium=1, support_bot_router=2), now=T0, generation=3
    )
    conditions = by_type(health.conditions)
    assert health.ready
    assert [c.type for c in health.conditions] == [READY, TIERS_READY, ROUTER_READY, DEGRADED]
    assert conditions[READY].status == "True"
    assert conditions[TIERS_READY].status == "True"
    assert conditions[ROUTER_READY].status == "True"
    assert conditions[DEGRADED].status == "False"
    assert all(c.observed_generation == 3 and c.last_transition_time == T0 for c in health.conditions)
    small, _, frontier = health.tiers
    assert (small.ready_replicas, small.replicas, small.threshold) == (2, 2, 0.85)
    assert frontier.ready is True and frontier.threshold is None  # external: no pods, always ready
    status = ModelCascadeStatus(tiers=health.tiers)
    assert summarize_status(status, tier_count=3).tiers == "3/3"


def test_a_tier_without_ready_replicas_says_so() -> None:
    cascade = example("external-last-tier.yaml")
    health = compute_health(cascade, deployments(support_bot_small=2, support_bot_router=1), now=T0)
    conditions = by_type(health.conditions)
    assert not health.ready
    assert conditions[TIERS_READY].status == "False"
    assert conditions[TIERS_READY].message == 'tier "medium" has 0/1 ready replicas'
    assert conditions[READY].reason == "TiersNotReady"
    assert 'tier "medium" has 0/1 ready replicas' in conditions[READY].message
    # The router has 1 of 2: serving, but below what was asked.
    assert conditions[ROUTER_READY].status == "True"
    assert conditions[DEGRADED].status == "True"
    assert conditions[DEGRADED].reason == "ReplicasUnavailable"
    assert conditions[DEGRADED].message == "the router has 1/2 ready replicas"


def test_pods_the_cluster_refuses_to_create_degrade_the_cascade_with_its_message() -> None:
    """The Deployment controller's ReplicaFailure (FailedCreate) reaches the cascade: the user sees why."""
    cascade = example("external-last-tier.yaml")
    observed = deployments(support_bot_small=2, support_bot_router=2)
    refusal = (
        'pods "support-bot-medium-5d8f-x" is forbidden: violates PodSecurity "restricted:latest": runAsNonRoot != true'
    )
    observed[("Deployment", "support-bot-medium")] = {
        "kind": "Deployment",
        "status": {
            "conditions": [
                {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": refusal},
            ]
        },
    }
    conditions = by_type(compute_health(cascade, observed, now=T0).conditions)
    assert conditions[DEGRADED].status == "True" and conditions[DEGRADED].reason == "PodsRefused"
    assert conditions[DEGRADED].message == f'tier "medium" cannot create its pods (FailedCreate): {refusal}'
    assert conditions[READY].status == "False" and refusal in conditions[READY].message
    cleared = by_type(
        compute_health(
            cascade, deployments(support_bot_small=2, support_bot_medium=1, support_bot_router=2), now=T1
        ).conditions
    )
    assert cleared[DEGRADED].status == "False"


def test_router_not_ready_and_nothing_observed_yet() -> None:
    cascade = example("chat-vllm-gpu.yaml")
    conditions = by_type(compute_health(cascade, {}, now=T0).conditions)
    assert conditions[ROUTER_READY].status == "False"
    assert conditions[ROUTER_READY].reason == "RouterNotReady"
    assert conditions[TIERS_READY].message == (
        'tier "small" has 0/2 ready replicas; tier "large" has 0/1 ready replicas'
    )
    assert conditions[DEGRADED].status == "False"  # starting up is not a problem


def test_last_transition_time_is_kept_while_the_status_holds() -> None:
    cascade = example("external-last-tier.yaml")
    starting = compute_health(cascade, {}, now=T0)
    still_starting = compute_health(cascade, {}, previous=starting.conditions, now=T1)
    assert still_starting.conditions == starting.conditions
    ready = compute_health(
        cascade,
        deployments(support_bot_small=2, support_bot_medium=1, support_bot_router=2),
        previous=[c.model_dump(by_alias=True) for c in still_starting.conditions],  # raw status dicts work too
        now=T1,
    )
    times = {c.type: c.last_transition_time for c in ready.conditions}
    assert times == {READY: T1, TIERS_READY: T1, ROUTER_READY: T1, DEGRADED: T0}


def test_conditions_of_other_types_are_kept() -> None:
    calibrated = Condition(type="Calibrated", status="True", reason="GoalMet", last_transition_time=T0)
    merged = merge_conditions([calibrated], [Condition(type=READY, status="False")], now=T1)
    assert [c.type for c in merged] == [READY, "Calibrated"]
    assert merged[1] == calibrated


def test_problems_make_the_cascade_degraded_with_their_reason() -> None:
    cascade = example("chat-vllm-gpu.yaml")
    problems = [Problem(ProblemReason.missing_secret, 'Secret "hf-token" ... does not exist')]
    conditions = by_type(compute_health(cascade, {}, problems=problems, now=T0).conditions)
    assert conditions[DEGRADED].status == "True"
    assert conditions[DEGRADED].reason == "MissingSecret"
    assert 'Secret "hf-token"' in conditions[DEGRADED].message
    assert conditions[READY].reason == "MissingSecret"
    assert 'Secret "hf-token"' in conditions[READY].message


def test_invalid_spec_conditions() -> None:
    previous = compute_health(example("chat-vllm-gpu.yaml"), {}, now=T0).conditions
    conditions = by_type(invalid_spec_conditions(previous, message="spec.tiers: field required", now=T1))
    assert conditions[READY].status == "False" and conditions[READY].reason == "InvalidSpec"
    assert conditions[DEGRADED].status == "True" and conditions[DEGRADED].last_transition_time == T1
    assert conditions[READY].last_transition_time == T0  # it was False already
    assert conditions[TIERS_READY].last_transition_time == T0


# --- check_semantics -----------------------------------------------------------------

ALL_SECRETS = {"hf-token", "chat-client-keys", "openai"}
ALL_GPUS = {"NVIDIA-L4", "NVIDIA-H100-80GB-HBM3", "NVIDIA-L40S", "NVIDIA-T4"}


def test_the_examples_have_no_problems_in_a_cluster_that_has_what_they_need() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        cascade = example(path.name)
        assert check_semantics(cascade, secrets=ALL_SECRETS, gpu_products=ALL_GPUS) == [], path.name


def test_missing_secrets_are_named_with_the_command_to_create_them() -> None:
    cascade = example("chat-vllm-gpu.yaml")
    problems = check_semantics(cascade, secrets=set(), gpu_products=None)
    assert [p.reason for p in problems] == ["MissingSecret", "MissingSecret"]
    assert 'Secret "hf-token" used by tier "large" (model.hubTokenSecret) does not exist in namespace "llm"' in (
        problems[0].message
    )
    assert "kubectl -n llm create secret generic hf-token --from-literal=token=" in problems[0].message
    assert "router.apiKeySecret" in problems[1].message


def test_missing_secret_keys_when_keys_are_known() -> None:
    cascade = example("external-last-tier.yaml")
    problems = check_semantics(cascade, secrets={"openai": {"token"}}, gpu_products=None)
    assert len(problems) == 1
    assert (
        problems[0].message
        == 'Secret "openai" used by tier "frontier" (apiKeySecret) has no key "api-key" (it has: token)'
    )


def test_a_gpu_type_no_node_offers_is_a_wait_not_a_fault() -> None:
    """No node with the tier's GPU type yet (a pool that scales from zero, no GPU feature discovery): the tier
    waits, nothing blocks the apply. (This was NoMatchingNodes, a fault that applied nothing: a deadlock.)"""
    cascade = example("chat-vllm-gpu.yaml")
    problems = check_semantics(cascade, secrets=ALL_SECRETS, gpu_products={"NVIDIA-L4", "NVIDIA-A100-SXM4-80GB"})
    assert [(p.reason, p.tier, p.blocking) for p in problems] == [("WaitingForGpuNodes", "large", False)]
    assert (
        "wait for a node with nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3 (resources.gpuType)" in problems[0].message
    )
    assert "nodes offer: NVIDIA-A100-SXM4-80GB, NVIDIA-L4" in problems[0].message
    none = check_semantics(cascade, secrets=ALL_SECRETS, gpu_products=set())
    assert len(none) == 2 and "GPU feature discovery" in none[0].message
    assert "set the tier's nodeSelector to the GPU label your nodes carry" in none[0].message


def test_a_tier_waiting_for_gpu_nodes_says_so_and_the_cascade_is_not_degraded() -> None:
    cascade = example("chat-vllm-gpu.yaml")
    waits = check_semantics(cascade, secrets=ALL_SECRETS, gpu_products={"NVIDIA-L4"})
    conditions = by_type(
        compute_health(cascade, deployments(chat_small=2, chat_router=2), problems=waits, now=T0).conditions
    )
    assert conditions[TIERS_READY].status == "False"
    assert conditions[TIERS_READY].reason == "WaitingForGpuNodes"
    assert conditions[TIERS_READY].message.startswith(
        'tier "large" has 0/1 ready replicas: its pods wait for a node with nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3'
    )
    assert "nodes offer: NVIDIA-L4" in conditions[TIERS_READY].message
    assert (conditions[READY].status, conditions[READY].reason) == ("False", "WaitingForGpuNodes")
    assert (conditions[DEGRADED].status, conditions[DEGRADED].reason) == ("False", "AsExpected")

    # The node came and the pods are ready; the node list (cached) may not show it yet: the wait says nothing.
    ready = compute_health(cascade, deployments(chat_small=2, chat_large=1, chat_router=2), problems=waits, now=T1)
    assert ready.ready and by_type(ready.conditions)[TIERS_READY].reason == "AllTiersReady"


def test_a_fault_still_degrades_while_a_tier_waits_for_gpu_nodes() -> None:
    cascade = example("chat-vllm-gpu.yaml")
    problems = check_semantics(cascade, secrets={"chat-client-keys"}, gpu_products=set())
    assert [p.reason for p in problems] == ["MissingSecret", "WaitingForGpuNodes", "WaitingForGpuNodes"]
    conditions = by_type(compute_health(cascade, {}, problems=problems, now=T0).conditions)
    assert (conditions[DEGRADED].status, conditions[DEGRADED].reason) == ("True", "MissingSecret")
    assert (
        "WaitingForGpuNodes" not in conditions[DEGRADED].message
        and "wait for a node" not in conditions[DEGRADED].message
    )
    assert conditions[READY].reason == "MissingSecret"
    assert conditions[TIERS_READY].reason == "WaitingForGpuNodes"


def test_a_read_write_once_claim_that_pods_on_several_nodes_share_is_a_warning() -> None:
    """The example's log claim (routers write, runs read) and students' claim (a run writes, the tier reads)."""
    cascade = example("chat-vllm-gpu.yaml")
    problems = check_semantics(
        cascade,
        secrets=ALL_SECRETS,
        gpu_products=ALL_GPUS,
        claim_modes={"kascade-logs": ("ReadWriteOnce",), "kascade-students": ("ReadWriteMany",)},
    )
    assert [(p.reason, p.blocking, p.degrades) for p in problems] == [("ClaimNotShared", False, True)]
    assert problems[0].message.startswith(
        'PersistentVolumeClaim "kascade-logs" (the escalation log, written by 2 router '
        "replicas and read by the distillation runs) is ReadWriteOnce: pods on "
        "different nodes cannot mount it at once"
    )
    assert "use a ReadWriteMany claim" in problems[0].message and "single-node cluster" in problems[0].message
    health = compute_health(cascade, deployments(chat_small=2, chat_large=1, chat_router=2), problems=problems, now=T0)
    conditions = by_type(health.conditions)
    assert health.ready  # it may well work (one node): a warning, not a stop
    assert (conditions[DEGRADED].status, conditions[DEGRADED].reason) == ("True", "ClaimNotShared")
    shared = {"kascade-logs": ("ReadWriteMany",), "kascade-students": ("ReadWriteMany",)}
    assert check_semantics(cascade, secrets=ALL_SECRETS, gpu_products=ALL_GPUS, claim_modes=shared) == []


def test_claims_used_by_one_pod_only_are_not_checked() -> None:
    from kascade.operator.problems import shared_claims

    body = yaml.safe_load((EXAMPLES / "chat-vllm-gpu.yaml").read_text())
    body["spec"].pop("distillation")
    body["spec"]["router"]["replicas"] = 1
    assert shared_claims(ModelCascade.model_validate(body)) == {}  # one router writes it, nobody else reads it
    body["spec"]["router"]["replicas"] = 3
    assert list(shared_claims(ModelCascade.model_validate(body))) == ["kascade-logs"]


def _tiers_body(*tiers: dict[str, Any]) -> ModelCascade:
    specs = [dict(t) for t in tiers]
    for spec in specs[:-1]:
        spec.setdefault("accept", {"threshold": 0.5})
    return ModelCascade.model_validate(
        {
            "apiVersion": "kascade.dev/v1alpha1",
            "kind": "ModelCascade",
            "metadata": {"name": "c", "namespace": "n"},
            "spec": {"tiers": specs},
        }
    )


def test_invalid_specs_the_schema_cannot_see() -> None:
    cascade = _tiers_body(
        {"name": "a", "model": {"uri": "pkg://smollm2-135m-instruct"}},
        {"name": "b", "engine": "transformers", "model": {"uri": "s3://bucket/m"}, "price": {"currency": "EUR"}},
        {
            "name": "router",
            "model": {"uri": "hf://o/m"},
            "resources": {"gpuType": "NVIDIA-L4"},
            "engineArgs": ["--port=9000", "--dtype=bfloat16"],
        },
        {"name": "d", "model": {"uri": "gs://bucket/m"}},
        {"name": "e", "model": {"uri": "pvc:///path"}},
    )
    problems = check_semantics(cascade, secrets=set(), gpu_products=None)
    assert {p.reason for p in problems} == {"InvalidSpec"}
    text = "\n".join(p.message for p in problems)
    assert "tier 'router' would be named 'c-router', the router's name" in text
    assert "tier prices must share one currency" in text
    assert 'tier "a": pkg:// models are packaged for Kascade\'s own server' in text
    assert 'tier "b": engine transformers cannot read s3://' in text
    assert 'tier "router": resources.gpuType is set but resources.gpus is 0' in text
    assert 'tier "router": engineArgs must not set --port' in text
    assert 'tier "d": model.uri scheme gs:// is not supported' in text
    assert 'tier "e": model.uri pvc:///path names no claim' in text


def test_an_escalation_log_on_the_pods_own_disk_is_refused_in_a_cluster() -> None:
    from kascade.operator.problems import check_semantics

    body = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "chat-vllm-gpu.yaml").read_text())
    body["spec"]["escalationLog"] = {"enabled": True, "uri": "/tmp/logs"}
    problems = check_semantics(ModelCascade.model_validate(body), secrets={}, gpu_products=None)
    assert any("in a cluster the log goes to pvc://claim/path or s3://bucket/prefix" in p.message for p in problems)


def test_a_judge_priced_in_another_currency_is_an_invalid_spec() -> None:
    cascade = ModelCascade.model_validate(
        {
            "apiVersion": "kascade.dev/v1alpha1",
            "kind": "ModelCascade",
            "metadata": {"name": "c", "namespace": "n"},
            "spec": {
                "tiers": [
                    {"name": "small", "model": {"uri": "hf://o/s"}, "accept": {"threshold": 0.5}},
                    {"name": "large", "model": {"uri": "hf://o/l"}},
                ],
                "calibration": {
                    "minAgreement": 0.9,
                    "shadowSampleRate": 0.1,
                    "judge": {"url": "https://judge.example/v1", "model": "j", "price": {"currency": "EUR"}},
                },
            },
        }
    )
    problems = check_semantics(cascade, secrets=set(), gpu_products=None)
    assert [p.reason for p in problems] == ["InvalidSpec"]
    assert "calibration.judge: EUR" in problems[0].message
