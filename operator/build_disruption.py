"""PodDisruptionBudgets of a cascade's tiers and router: what a node drain may take at once. Pure.

Each tier that deploys pods and the router get a policy/v1
PodDisruptionBudget of the same name as their Deployment, selecting its pods,
with `maxUnavailable: 1`: a drain (an upgrade, a node pool scaling down)
evicts one pod of a component at a time and waits for its successor to be
ready before the next, so a component with two or more replicas never loses
them all at once, the last tier above all.

With one replica, `maxUnavailable: 1` lets the drain evict it: the component
is down until its successor is ready (minutes for a large model). The only
budget that would keep it (`minAvailable: 1`) blocks every drain of its node
for good, which stalls cluster upgrades and autoscalers; run the last tier
with two replicas (or `autoscaling.minReplicas: 2`) to keep it answering
through drains. `unhealthyPodEvictionPolicy: AlwaysAllow`: a pod that is not
ready (a model still loading, a crash loop) serves nobody and never holds a
drain up.
"""

from __future__ import annotations

from typing import Any

from kascade.api.modelcascade import ModelCascade, Tier
from kascade.operator.build_tier import cascade_namespace
from kascade.operator.labels import (
    COMPONENT_ROUTER,
    COMPONENT_TIER,
    common_labels,
    router_child_name,
    selector_labels,
    tier_child_name,
    with_spec_hash,
)

PDB_API_VERSION = "policy/v1"


def _budget(name: str, namespace: str, labels: dict[str, str], selector: dict[str, str]) -> dict[str, Any]:
    manifest = {
        "apiVersion": PDB_API_VERSION,
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
    return with_spec_hash(manifest)


def build_tier_disruption_budget(cascade: ModelCascade, tier: Tier) -> dict[str, Any]:
    """The tier's PodDisruptionBudget `{cascade}-{tier}`: one of its pods evicted at a time."""
    name = cascade.metadata.name
    return _budget(
        tier_child_name(name, tier.name),
        cascade_namespace(cascade),
        common_labels(name, COMPONENT_TIER, tier.name),
        selector_labels(name, COMPONENT_TIER, tier.name),
    )


def build_router_disruption_budget(cascade: ModelCascade) -> dict[str, Any]:
    """The router's PodDisruptionBudget `{cascade}-router`: one of its pods evicted at a time."""
    name = cascade.metadata.name
    return _budget(
        router_child_name(name),
        cascade_namespace(cascade),
        common_labels(name, COMPONENT_ROUTER),
        selector_labels(name, COMPONENT_ROUTER),
    )
