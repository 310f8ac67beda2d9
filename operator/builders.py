"""Every child of a ModelCascade, as plain manifests, in the order they are applied.

Pure: a parsed `ModelCascade` and the `OperatorSettings` in, a list of dicts
out; no kopf, no kubernetes client, no I/O. The reconcile adds the cascade's
owner reference to each (`kopf.append_owner_reference`: controller, so that
deleting the cascade removes them) and applies what `plan.plan_children` says.

Each manifest carries the common labels (`labels.common_labels`) and the
`kascade.dev/spec-hash` annotation, and holds no owner references.

The builders themselves live in `build_tier` (a tier's Deployment and
Service; engine specifics in `engine_vllm` and `engine_transformers`),
`build_autoscaling` (an autoscaled tier's ScaledObject or HPA),
`build_disruption` (the PodDisruptionBudgets) and `build_router` (the
router's ConfigMap, Deployment, Services and RBAC); they are re-exported here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from kascade.api.modelcascade import ModelCascade
from kascade.operator.build_autoscaling import KEDA_API_VERSION, Autoscaler, build_tier_autoscaler, choose_autoscaler
from kascade.operator.build_disruption import build_router_disruption_budget, build_tier_disruption_budget
from kascade.operator.build_distillation import build_distiller_children
from kascade.operator.build_router import (
    build_router_config,
    build_router_configmap,
    build_router_deployment,
    build_router_metrics_service,
    build_router_role,
    build_router_role_binding,
    build_router_service,
    build_router_service_account,
    endpoint_url,
    render_router_config,
    router_metrics_service_name,
)
from kascade.operator.build_tier import (
    build_tier_deployment,
    build_tier_service,
    deploys_pods,
    tier_service_url,
)
from kascade.operator.labels import router_child_name, tier_child_name
from kascade.operator.settings import OperatorSettings

__all__ = [
    "CHILD_KINDS",
    "KEDA_CHILD_KINDS",
    "Autoscaler",
    "ChildKind",
    "build_children",
    "build_router_config",
    "build_router_configmap",
    "build_router_deployment",
    "build_router_metrics_service",
    "build_router_role",
    "build_router_role_binding",
    "build_router_service",
    "build_router_service_account",
    "build_tier_deployment",
    "build_tier_service",
    "deploys_pods",
    "endpoint_url",
    "name_collisions",
    "render_router_config",
    "tier_service_url",
]


class ChildKind(NamedTuple):
    """A kind of object a cascade owns: what the handler lists (with `labels.owned_selector`) to observe them."""

    api_version: str
    kind: str
    plural: str


# Apply order: identity and permissions first, then the config, the tiers, the router.
CHILD_KINDS: tuple[ChildKind, ...] = (
    ChildKind("v1", "ServiceAccount", "serviceaccounts"),
    ChildKind("rbac.authorization.k8s.io/v1", "Role", "roles"),
    ChildKind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    ChildKind("v1", "ConfigMap", "configmaps"),
    ChildKind("v1", "Service", "services"),
    ChildKind("apps/v1", "Deployment", "deployments"),
    ChildKind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    ChildKind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
)

# Kinds of an optional API: listed (and so owned) only where the cluster serves it (KEDA's CRDs installed).
KEDA_CHILD_KINDS: tuple[ChildKind, ...] = (ChildKind(KEDA_API_VERSION, "ScaledObject", "scaledobjects"),)


def name_collisions(cascade: ModelCascade) -> list[str]:
    """Tiers whose children would take the router's names (a tier named `router` or `router-metrics`), or each
    other's."""
    router = router_child_name(cascade.metadata.name)
    metrics = router_metrics_service_name(cascade.metadata.name)
    seen: dict[str, str] = {}
    problems: list[str] = []
    for tier in cascade.spec.tiers:
        if not deploys_pods(tier):
            continue
        name = tier_child_name(cascade.metadata.name, tier.name)
        if name in (router, metrics):
            problems.append(f"tier {tier.name!r} would be named {name!r}, the router's name; rename the tier")
        elif name in seen:
            problems.append(f"tiers {seen[name]!r} and {tier.name!r} would both be named {name!r}")
        seen.setdefault(name, tier.name)
    return problems


def build_children(
    cascade: ModelCascade, settings: OperatorSettings, *, autoscaler: Autoscaler | None = None
) -> list[dict[str, Any]]:
    """All children of `cascade`, in apply order.

    ServiceAccount, Role, RoleBinding, ConfigMap (router config), then per tier
    that deploys pods its Service, Deployment, PodDisruptionBudget and, when
    autoscaled, what scales it (`autoscaler`: a ScaledObject or an HPA; None:
    what `choose_autoscaler` picks on a cluster that serves neither KEDA nor
    external metrics), then the router's Services (the endpoint, then the metrics one), Deployment and
    PodDisruptionBudget. Raises ValueError when two children would share a
    name (see `name_collisions`; `problems.check_semantics` reports it as
    InvalidSpec first).
    """
    collisions = name_collisions(cascade)
    if collisions:
        raise ValueError("; ".join(collisions))
    if autoscaler is None:
        autoscaler = choose_autoscaler(settings, keda=False, external_metrics=False)
    configmap = build_router_configmap(cascade, settings)
    children: list[dict[str, Any]] = [
        build_router_service_account(cascade, settings),
        build_router_role(cascade, settings),
        build_router_role_binding(cascade, settings),
        *build_distiller_children(cascade),
        configmap,
    ]
    for tier in cascade.spec.tiers:
        if deploys_pods(tier):
            children.append(build_tier_service(cascade, tier, settings))
            children.append(build_tier_deployment(cascade, tier, settings))
            children.append(build_tier_disruption_budget(cascade, tier))
            if tier.autoscaling is not None:
                children.append(build_tier_autoscaler(cascade, tier, settings, autoscaler))
    children.append(build_router_service(cascade, settings))
    children.append(build_router_metrics_service(cascade, settings))
    children.append(build_router_deployment(cascade, settings, configmap=configmap))
    children.append(build_router_disruption_budget(cascade))
    return children
