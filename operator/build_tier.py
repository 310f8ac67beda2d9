"""A tier's Deployment and Service: pure functions from the ModelCascade to plain manifests.

The pod is the same for every engine (GPUs, node selection, tolerations, model
volumes, probes on the engine's `/health`, Pod Security "restricted"); the engine modules
(`engine_vllm`, `engine_transformers`) supply the container's image, command
line and their own volumes. Engine `external` deploys nothing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kascade.api.model_uri import ModelUri
from kascade.api.modelcascade import EngineKind, ModelCascade, Resources, Tier, Toleration
from kascade.operator import engine_transformers, engine_vllm
from kascade.operator.labels import (
    COMPONENT_TIER,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    PART_OF,
    PART_OF_LABEL,
    common_labels,
    selector_labels,
    tier_child_name,
    with_spec_hash,
)
from kascade.operator.pod_security import restricted
from kascade.operator.settings import OperatorSettings

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set by NVIDIA GPU feature discovery
HEALTH_PATH = "/health"  # vLLM and `kascade serve` both serve it
PORT_NAME = "http"
MODEL_VOLUME = "model"
CACHE_VOLUME = "model-cache"
DEFAULT_NAMESPACE = "default"

EngineBuilder = Callable[..., tuple[dict[str, Any], list[dict[str, Any]]]]

# One builder per engine; `external` has none: nothing is deployed for it.
ENGINE_BUILDERS: dict[EngineKind, EngineBuilder] = {
    EngineKind.vllm: engine_vllm.build_engine_container,
    EngineKind.transformers: engine_transformers.build_engine_container,
}


@dataclass(frozen=True)
class ModelRef:
    """Where a tier's weights come from, as the pod sees them.

    scheme: `hf`, `pvc`, `s3`, `pkg`, `path` (a plain path or file://) or the
    unknown scheme as written. `model_path`: the folder the engine reads when
    the weights are on a mounted volume or a local path; None when the engine
    fetches them itself (hf, s3, pkg).
    """

    uri: str
    scheme: str
    repo_id: str | None = None
    revision: str | None = None
    claim: str | None = None
    claim_path: str = ""
    model_path: str | None = None

    @property
    def needs_download_cache(self) -> bool:
        """hf:// and pkg:// models are downloaded into a cache volume at start."""
        return self.scheme in ("hf", "pkg")


def resolve_model(uri: str, settings: OperatorSettings) -> ModelRef:
    """Parse a tier's `model.uri` into a `ModelRef` (no I/O).

    `pvc://claim/some/path` -> the claim mounted read-only at
    `settings.model_mount_path`, model folder `<mount>/some/path`;
    `hf://org/name@rev` -> repo `org/name`, revision `rev`;
    `file:///p` and `/p` -> the path `/p` inside the container.
    """
    location = ModelUri.parse(uri)
    if location.is_path:
        return ModelRef(uri=uri, scheme=location.scheme, model_path=location.path)
    if location.scheme == "hf":
        return ModelRef(uri=uri, scheme="hf", repo_id=location.hf_repo_id, revision=location.hf_revision)
    if location.scheme == "pvc":
        path = location.pvc_path or ""
        mount = settings.model_mount_path.rstrip("/") or "/"
        return ModelRef(
            uri=uri,
            scheme="pvc",
            claim=location.pvc_claim,
            claim_path=path,
            model_path=posixpath.join(mount, path) if path else mount,
        )
    return ModelRef(uri=uri, scheme=location.scheme)


def cascade_namespace(cascade: ModelCascade) -> str:
    """The namespace of the cascade's children (kubectl's default when the manifest names none)."""
    return cascade.metadata.namespace or DEFAULT_NAMESPACE


def deploys_pods(tier: Tier) -> bool:
    """Whether a tier gets a Deployment and a Service (every engine but `external`)."""
    return tier.engine in ENGINE_BUILDERS


def tier_service_url(cascade: ModelCascade, tier: Tier, settings: OperatorSettings) -> str:
    """The OpenAI base URL the router calls for `tier`: its Service, or model.uri for engine external."""
    if not deploys_pods(tier):
        return tier.model.uri
    name = tier_child_name(cascade.metadata.name, tier.name)
    return f"http://{name}.{cascade_namespace(cascade)}.svc:{settings.engine_port}/v1"


class Placement(Protocol):
    """Where a pod may run and what it needs: a tier's, or a distillation run's."""

    @property
    def resources(self) -> Resources: ...
    @property
    def tolerations(self) -> list[Toleration]: ...
    @property
    def node_selector(self) -> dict[str, str]: ...


def tier_node_selector(tier: Placement, settings: OperatorSettings) -> dict[str, str]:
    """Operator default, then `nvidia.com/gpu.product` for a GPU tier with a gpuType, then the tier's own (wins)."""
    selector = dict(settings.tier_node_selector)
    if tier.resources.gpus > 0 and tier.resources.gpu_type:
        selector[GPU_PRODUCT_LABEL] = tier.resources.gpu_type
    selector.update(tier.node_selector)
    return selector


def tier_tolerations(tier: Placement, settings: OperatorSettings) -> list[dict[str, Any]]:
    """GPU tiers tolerate the GPU taints (operator defaults); every tier adds its own tolerations."""
    tolerations = [dict(toleration) for toleration in settings.gpu_tolerations] if tier.resources.gpus > 0 else []
    for toleration in tier.tolerations:
        rendered = toleration.model_dump(by_alias=True, exclude_none=True)
        if rendered not in tolerations:
            tolerations.append(rendered)
    return tolerations


def tier_resources(tier: Placement) -> dict[str, dict[str, str]]:
    """requests: cpu and memory as declared; GPUs as both request and limit (extended resources need both equal)."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if tier.resources.cpu is not None:
        requests["cpu"] = tier.resources.cpu
    if tier.resources.memory is not None:
        requests["memory"] = tier.resources.memory
    if tier.resources.gpus > 0:
        requests[GPU_RESOURCE] = str(tier.resources.gpus)
        limits[GPU_RESOURCE] = str(tier.resources.gpus)
    resources: dict[str, dict[str, str]] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def _model_volumes(
    tier: Tier, model: ModelRef, settings: OperatorSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts, env) that bring the model's weights to the engine."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    env: list[dict[str, Any]] = []
    if model.scheme == "pvc" and model.claim:
        volumes.append({"name": MODEL_VOLUME, "persistentVolumeClaim": {"claimName": model.claim, "readOnly": True}})
        mounts.append({"name": MODEL_VOLUME, "mountPath": settings.model_mount_path, "readOnly": True})
    if model.needs_download_cache:
        cache_root = settings.model_cache_path.rstrip("/") or "/"
        volumes.append(_cache_volume(settings))
        mounts.append({"name": CACHE_VOLUME, "mountPath": cache_root})
        env.append({"name": "HF_HOME", "value": posixpath.join(cache_root, "huggingface")})
        if tier.engine is EngineKind.transformers:
            env.append({"name": "KASCADE_CACHE_DIR", "value": posixpath.join(cache_root, "kascade")})
    token = tier.model.hub_token_secret
    if token is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    return volumes, mounts, env


def _cache_volume(settings: OperatorSettings) -> dict[str, Any]:
    if settings.model_cache_storage_class:
        return {
            "name": CACHE_VOLUME,
            "ephemeral": {
                "volumeClaimTemplate": {
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": settings.model_cache_storage_class,
                        "resources": {"requests": {"storage": settings.model_cache_size}},
                    }
                }
            },
        }
    return {"name": CACHE_VOLUME, "emptyDir": {"sizeLimit": settings.model_cache_size}}


def _probes(settings: OperatorSettings) -> dict[str, dict[str, Any]]:
    def http_get(period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": HEALTH_PATH, "port": PORT_NAME},
            "periodSeconds": period,
            "timeoutSeconds": settings.probe_timeout_seconds,
            "failureThreshold": failures,
        }

    return {
        # Large models take minutes to download and load; liveness and
        # readiness start only once this has passed.
        "startupProbe": http_get(settings.startup_probe_period_seconds, settings.startup_probe_failure_threshold),
        "readinessProbe": http_get(settings.readiness_probe_period_seconds, 3),
        "livenessProbe": http_get(settings.liveness_probe_period_seconds, settings.liveness_probe_failure_threshold),
    }


def _require_pods(tier: Tier) -> EngineBuilder:
    builder = ENGINE_BUILDERS.get(tier.engine)
    if builder is None:
        raise ValueError(f"tier {tier.name!r}: engine {tier.engine.value!r} deploys no pods; nothing to build")
    return builder


def build_tier_pod_spec(cascade: ModelCascade, tier: Tier, settings: OperatorSettings) -> dict[str, Any]:
    """The pod spec of a tier: the engine's container plus GPUs, scheduling, model volumes and probes."""
    build_container = _require_pods(tier)
    model = resolve_model(tier.model.uri, settings)
    container, engine_volumes = build_container(tier, task=cascade.spec.task, model=model, settings=settings)
    volumes, mounts, env = _model_volumes(tier, model, settings)
    all_env = [*container.get("env", []), *env]
    container = {
        **container,
        "ports": [{"name": PORT_NAME, "containerPort": settings.engine_port, "protocol": "TCP"}],
        **({"env": all_env} if all_env else {}),
        **_probes(settings),
    }
    all_mounts = [*container.get("volumeMounts", []), *mounts]
    if all_mounts:
        container["volumeMounts"] = all_mounts
    resources = tier_resources(tier)
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {
        "containers": [container],
        # Service links would inject {SERVICE}_PORT variables; vLLM reads VLLM_* ones.
        "enableServiceLinks": False,
    }
    all_volumes = [*engine_volumes, *volumes]
    if all_volumes:
        pod["volumes"] = all_volumes
    node_selector = tier_node_selector(tier, settings)
    if node_selector:
        pod["nodeSelector"] = node_selector
    tolerations = tier_tolerations(tier, settings)
    if tolerations:
        pod["tolerations"] = tolerations
    if tier.affinity:
        pod["affinity"] = tier.affinity
    return restricted(pod, settings)


def tier_rollout_strategy(tier: Tier) -> dict[str, Any] | None:
    """How a GPU tier's Deployment replaces its pods; None (the default, surge one) for CPU tiers.

    The default RollingUpdate starts a new pod before it stops an old one, so a
    change (a promotion included) needs a spare set of GPUs: on a pool that has
    exactly the GPUs the tiers ask for, the new pod stays Pending and the old
    model serves forever. No surge, one unavailable: an old pod goes first and
    frees its GPUs for its successor. Not Recreate: with several replicas the
    others keep serving while one is replaced; with one replica both mean the same.
    """
    if tier.resources.gpus == 0:
        return None
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def build_tier_deployment(cascade: ModelCascade, tier: Tier, settings: OperatorSettings) -> dict[str, Any]:
    """The tier's Deployment `{cascade}-{tier}` (apps/v1), spec-hash annotated.

    Raises ValueError for engine `external`, which deploys nothing (see `deploys_pods`).
    """
    name = cascade.metadata.name
    selector = selector_labels(name, COMPONENT_TIER, tier.name)
    strategy = tier_rollout_strategy(tier)
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": tier_child_name(name, tier.name),
            "namespace": cascade_namespace(cascade),
            "labels": common_labels(name, COMPONENT_TIER, tier.name),
        },
        "spec": {
            # An autoscaled tier's replicas are its autoscaler's: left out, and kept as they are on a replace.
            **({} if tier.autoscaling is not None else {"replicas": tier.replicas}),
            "selector": {"matchLabels": selector},
            **({"strategy": strategy} if strategy else {}),
            "template": {
                # No version label here: upgrading the operator must not restart GPU pods by itself.
                "metadata": {"labels": {**selector, PART_OF_LABEL: PART_OF, MANAGED_BY_LABEL: MANAGED_BY}},
                "spec": build_tier_pod_spec(cascade, tier, settings),
            },
        },
    }
    return with_spec_hash(manifest)


def build_tier_service(cascade: ModelCascade, tier: Tier, settings: OperatorSettings) -> dict[str, Any]:
    """The tier's ClusterIP Service `{cascade}-{tier}` on the engine port.

    Raises ValueError for engine `external`, which deploys nothing.
    """
    _require_pods(tier)
    name = cascade.metadata.name
    manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": tier_child_name(name, tier.name),
            "namespace": cascade_namespace(cascade),
            "labels": common_labels(name, COMPONENT_TIER, tier.name),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name, COMPONENT_TIER, tier.name),
            "ports": [{"name": PORT_NAME, "port": settings.engine_port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }
    return with_spec_hash(manifest)
