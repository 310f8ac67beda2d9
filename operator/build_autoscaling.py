"""What scales an autoscaled tier: a KEDA ScaledObject, or an autoscaling/v2 HorizontalPodAutoscaler. Pure.

The load of a tier is what the routers send it: requests in flight plus
requests queued for it, summed over every router replica (the routers'
`kascade_tier_in_flight` and `kascade_tier_queued` gauges, scraped by
Prometheus through the chart's ServiceMonitor). The last tier is so sized
from the escalation load the smaller tiers pass on, not from its own CPU.

Which renderer (`Autoscaler`, chosen by `choose_autoscaler` from the
operator's `autoscaler` setting and what the cluster serves):

- `keda`: a ScaledObject with KEDA's prometheus trigger on that sum (target
  `targetPerReplica` per replica). KEDA drives its own HPA from 1 to N and
  scales between 0 and 1 itself, so only this one scales a tier to zero. A
  tier before the last that has no replica is skipped by the routers, which
  count each skip (`kascade_tier_skipped_no_replica_total`); a skip in the
  last two minutes counts as one request of demand, which wakes the tier.
- `hpa_external`: an HPA on the external metric `kascade_tier_load` (an
  external metrics API, e.g. prometheus-adapter, serves the same sum under
  that name; docs/load.md has the adapter's rule), `AverageValue` =
  `targetPerReplica`. minReplicas is at least 1: an HPA does not scale to zero.
- `hpa_cpu`: an HPA on the tier's CPU utilization (`hpa_cpu_utilization`),
  when nothing serves the routers' load to an HPA. A poor signal for a GPU
  engine, which saturates its GPU long before its CPU: the last resort.

Either way the Deployment's `replicas` is the autoscaler's: the tier's
Deployment is built without it (`build_tier.build_tier_deployment`) and a
replace keeps the live value (`replacement.replacement`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from kascade.api.autoscaling import Autoscaling
from kascade.api.modelcascade import ModelCascade, Tier
from kascade.operator.build_tier import cascade_namespace
from kascade.operator.labels import (
    CASCADE_LABEL,
    COMPONENT_TIER,
    MANAGED_BY_LABEL,
    common_labels,
    label_value,
    tier_child_name,
    with_spec_hash,
)
from kascade.operator.settings import OperatorSettings
from kascade.runtime.metrics import TIER_IN_FLIGHT, TIER_QUEUED, TIER_SKIPPED_NO_REPLICA

KEDA_API_VERSION = "keda.sh/v1alpha1"
HPA_API_VERSION = "autoscaling/v2"
# KEDA copies a ScaledObject's labels onto the HPA it makes; without ours that HPA is not taken for our child.
KEDA_EXCLUDED_LABELS_ANNOTATION = "scaledobject.keda.sh/hpa-excluded-labels"
EXTERNAL_LOAD_METRIC = "kascade_tier_load"  # the name an external metrics API serves the tier's load under
DEMAND_WINDOW = "2m"  # a skip (no replica) this recent wakes a tier at zero
KEDA_POLLING_SECONDS = 15


class Autoscaler(StrEnum):
    keda = "keda"
    hpa_external = "hpa-external"
    hpa_cpu = "hpa-cpu"


def choose_autoscaler(settings: OperatorSettings, *, keda: bool, external_metrics: bool) -> Autoscaler:
    """The operator's `autoscaler` setting against what the cluster serves (KEDA, an external metrics API)."""
    if settings.autoscaler == "keda" or (settings.autoscaler == "auto" and keda):
        return Autoscaler.keda
    return Autoscaler.hpa_external if external_metrics else Autoscaler.hpa_cpu


def tier_load_query(cascade: ModelCascade, tier: Tier) -> str:
    """PromQL: the tier's requests in flight plus queued over every router replica (absent series count 0).

    For a tier that scales to zero, a request that skipped it in the last
    `DEMAND_WINDOW` (no replica) adds one: enough to wake it, never more than
    one replica's worth.
    """
    selector = f'{{namespace="{cascade_namespace(cascade)}",cascade="{cascade.metadata.name}",tier="{tier.name}"}}'
    terms = [f"(sum({TIER_IN_FLIGHT}{selector}) or vector(0))", f"(sum({TIER_QUEUED}{selector}) or vector(0))"]
    if tier.autoscaling is not None and tier.autoscaling.scales_to_zero:
        skipped = f"sum(increase({TIER_SKIPPED_NO_REPLICA}_total{selector}[{DEMAND_WINDOW}]))"
        terms.append(f"clamp_max({skipped} or vector(0), 1)")
    return " + ".join(terms)


def _metadata(cascade: ModelCascade, tier: Tier) -> dict[str, Any]:
    return {
        "name": tier_child_name(cascade.metadata.name, tier.name),
        "namespace": cascade_namespace(cascade),
        "labels": common_labels(cascade.metadata.name, COMPONENT_TIER, tier.name),
    }


def _target(cascade: ModelCascade, tier: Tier) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": tier_child_name(cascade.metadata.name, tier.name)}


def _scale_down(seconds: int) -> dict[str, Any]:
    return {"scaleDown": {"stabilizationWindowSeconds": seconds}}


def build_scaled_object(cascade: ModelCascade, tier: Tier, settings: OperatorSettings) -> dict[str, Any]:
    """The tier's KEDA ScaledObject `{cascade}-{tier}` (keda.sh/v1alpha1), spec-hash annotated."""
    scaling = _scaling(tier)
    metadata = _metadata(cascade, tier)
    metadata["annotations"] = {KEDA_EXCLUDED_LABELS_ANNOTATION: f"{MANAGED_BY_LABEL},{CASCADE_LABEL}"}
    manifest = {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": _target(cascade, tier),
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "pollingInterval": KEDA_POLLING_SECONDS,
            "cooldownPeriod": scaling.scale_down_delay_seconds,  # from the last activity to zero
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _scale_down(scaling.scale_down_delay_seconds)}},
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": settings.prometheus_address,
                        "query": tier_load_query(cascade, tier),
                        "threshold": str(scaling.target_per_replica),
                        "activationThreshold": "0",  # any load or recent skip wakes a tier at zero
                    },
                }
            ],
        },
    }
    return with_spec_hash(manifest)


def build_tier_hpa(
    cascade: ModelCascade, tier: Tier, settings: OperatorSettings, autoscaler: Autoscaler
) -> dict[str, Any]:
    """The tier's HorizontalPodAutoscaler `{cascade}-{tier}` (autoscaling/v2): on the routers' load through the
    external metrics API (`hpa_external`), else on CPU (`hpa_cpu`). minReplicas at least 1."""
    scaling = _scaling(tier)
    if autoscaler is Autoscaler.hpa_external:
        selector = {"cascade": label_value(cascade.metadata.name), "tier": tier.name}
        metric: dict[str, Any] = {
            "type": "External",
            "external": {
                "metric": {"name": EXTERNAL_LOAD_METRIC, "selector": {"matchLabels": selector}},
                "target": {"type": "AverageValue", "averageValue": str(scaling.target_per_replica)},
            },
        }
    else:
        metric = {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": settings.hpa_cpu_utilization},
            },
        }
    manifest = {
        "apiVersion": HPA_API_VERSION,
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(cascade, tier),
        "spec": {
            "scaleTargetRef": _target(cascade, tier),
            "minReplicas": max(scaling.min_replicas, 1),
            "maxReplicas": scaling.max_replicas,
            "metrics": [metric],
            "behavior": _scale_down(scaling.scale_down_delay_seconds),
        },
    }
    return with_spec_hash(manifest)


def build_tier_autoscaler(
    cascade: ModelCascade, tier: Tier, settings: OperatorSettings, autoscaler: Autoscaler
) -> dict[str, Any]:
    """The ScaledObject or the HPA of an autoscaled tier, as `autoscaler` says."""
    if autoscaler is Autoscaler.keda:
        return build_scaled_object(cascade, tier, settings)
    return build_tier_hpa(cascade, tier, settings, autoscaler)


def _scaling(tier: Tier) -> Autoscaling:
    if tier.autoscaling is None:
        raise ValueError(f"tier {tier.name!r} has no autoscaling; nothing scales it")
    return tier.autoscaling
