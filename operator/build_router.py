"""The router's children: ConfigMap, Deployment, Services, and its least-privilege RBAC.

All are named `{cascade}-router` (see `labels.router_child_name`), but for the
metrics Service, `{cascade}-router-metrics`. The router serves the API on the
port named `http`, which the cascade's Service exposes, and /metrics and /stats
on the port named `metrics`, which only the headless metrics Service names (the
chart's ServiceMonitor scrapes it; its optional NetworkPolicy lets only the
monitoring namespace reach it). The router
reads its config from the ConfigMap (rendered from the ModelCascade by
`kascade.runtime.config.router_config_from_cascade`), reaches the tiers through
their Services, reads API keys from mounted Secret files, and writes its own
counter slot into the ModelCascade's status: its ServiceAccount may `get` and
`patch` `modelcascades/status` of this one resource and nothing else.
"""

from __future__ import annotations

from typing import Any

import yaml

from kascade.api.model_uri import ModelUri
from kascade.api.modelcascade import GROUP, PLURAL, ModelCascade
from kascade.operator.build_tier import cascade_namespace, tier_service_url
from kascade.operator.labels import (
    COMPONENT_ROUTER,
    CONFIG_HASH_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    PART_OF,
    PART_OF_LABEL,
    child_name,
    common_labels,
    router_child_name,
    selector_labels,
    stable_hash,
    with_spec_hash,
)
from kascade.operator.pod_security import restricted
from kascade.operator.settings import OperatorSettings
from kascade.runtime.cluster_status.report import StatusReportConfig
from kascade.runtime.config import DEFAULT_METRICS_PORT, RouterConfig, judge_api_key_secret, router_config_from_cascade

CONFIG_DIR = "/etc/kascade"
CONFIG_FILE = "router.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
# Secrets live apart from the ConfigMap's folder: a mount inside another
# (read-only, atomically swapped) volume mount is fragile.
SECRETS_DIR = "/var/run/kascade/secrets"
CLIENT_KEYS_VOLUME = "client-api-keys"
CLIENT_KEYS_FILE = f"{SECRETS_DIR}/clients/keys"
# The judge.url's API key (matcher judge with an external judge).
JUDGE_KEY_VOLUME = "judge-api-key"
JUDGE_KEY_FILE = f"{SECRETS_DIR}/judge/api-key"
PORT_NAME = "http"
# /metrics and /stats: a port of their own, which the cascade's Service does not expose.
METRICS_PORT_NAME = "metrics"
METRICS_PORT = DEFAULT_METRICS_PORT
# The escalation log's claim (spec.escalationLog.uri pvc://claim/path), mounted read-write.
ESCALATION_LOG_VOLUME = "escalation-log"
ESCALATION_LOG_DIR = "/var/lib/kascade/escalation-log"

# The pod's own name (downward API): the `pod` of its status slot (StatusReportConfig.pod_env).
ENV_POD_NAME = "POD_NAME"
ENV_POD_NAMESPACE = "POD_NAMESPACE"


def tier_api_key_volume(tier: str) -> str:
    """Volume name of a tier's API-key Secret (a DNS label: tier names are at most 40 characters)."""
    return f"tier-{tier}-api-key"


def tier_api_key_file(tier: str) -> str:
    """Where the router reads a tier's API key."""
    return f"{SECRETS_DIR}/tiers/{tier}/api-key"


def _metadata(cascade: ModelCascade) -> dict[str, Any]:
    name = cascade.metadata.name
    return {
        "name": router_child_name(name),
        "namespace": cascade_namespace(cascade),
        "labels": common_labels(name, COMPONENT_ROUTER),
    }


def router_metrics_service_name(cascade: str) -> str:
    """Name of the Service that names the routers' metrics port (for the ServiceMonitor): `{cascade}-router-metrics`."""
    return child_name(cascade, "router-metrics")


def endpoint_url(cascade: ModelCascade, settings: OperatorSettings) -> str:
    """The cascade's OpenAI-compatible base URL inside the cluster (for `status.endpoint`)."""
    return (
        f"http://{router_child_name(cascade.metadata.name)}.{cascade_namespace(cascade)}.svc:{settings.router_port}/v1"
    )


def build_router_config(cascade: ModelCascade, settings: OperatorSettings) -> RouterConfig:
    """The router's config: tiers at their Service URLs (model.uri for external), keys as mounted files,
    and where to report its counters (this cascade's status, in-cluster API server and token)."""
    spec = cascade.spec
    config = router_config_from_cascade(
        cascade,
        {tier.name: tier_service_url(cascade, tier, settings) for tier in spec.tiers},
        tier_api_key_files={
            tier.name: tier_api_key_file(tier.name) for tier in spec.tiers if tier.api_key_secret is not None
        },
        api_keys_file=CLIENT_KEYS_FILE if spec.router.api_key_secret is not None else None,
        escalation_log_uri=router_escalation_log_uri(cascade),
        judge_api_key_file=JUDGE_KEY_FILE,
    )
    report = StatusReportConfig(
        namespace=cascade_namespace(cascade),
        name=cascade.metadata.name,
        pod_env=ENV_POD_NAME,
        interval_seconds=settings.router_status_report_interval_seconds,
    )
    return config.model_copy(update={"status_report": report, "metrics_port": METRICS_PORT})


def render_router_config(config: RouterConfig) -> str:
    """YAML that `RouterConfig.model_validate(yaml.safe_load(text))` reads back equal to `config`."""
    return yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False)


def build_router_configmap(cascade: ModelCascade, settings: OperatorSettings) -> dict[str, Any]:
    """ConfigMap `{cascade}-router` holding `router.yaml`."""
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(cascade),
        "data": {CONFIG_FILE: render_router_config(build_router_config(cascade, settings))},
    }
    return with_spec_hash(manifest)


def config_hash(configmap: dict[str, Any]) -> str:
    """Hash of a ConfigMap's data: the router's pod template carries it, so pods roll when the config changes."""
    return stable_hash({"data": configmap.get("data", {}), "binaryData": configmap.get("binaryData", {})})


def _secret_volumes(cascade: ModelCascade) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each API-key Secret mounted read-only, only the one key, as a file the config points at."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for tier in cascade.spec.tiers:
        ref = tier.api_key_secret
        if ref is None:
            continue
        volume = tier_api_key_volume(tier.name)
        volumes.append(
            {"name": volume, "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": "api-key"}]}}
        )
        mounts.append({"name": volume, "mountPath": f"{SECRETS_DIR}/tiers/{tier.name}", "readOnly": True})
    ref = cascade.spec.router.api_key_secret
    if ref is not None:
        volumes.append(
            {
                "name": CLIENT_KEYS_VOLUME,
                "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": "keys"}]},
            }
        )
        mounts.append({"name": CLIENT_KEYS_VOLUME, "mountPath": f"{SECRETS_DIR}/clients", "readOnly": True})
    ref = judge_api_key_secret(cascade)
    if ref is not None:
        volumes.append(
            {
                "name": JUDGE_KEY_VOLUME,
                "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": "api-key"}]},
            }
        )
        mounts.append({"name": JUDGE_KEY_VOLUME, "mountPath": f"{SECRETS_DIR}/judge", "readOnly": True})
    return volumes, mounts


def router_escalation_log_uri(cascade: ModelCascade) -> str | None:
    """Where the routers write the escalation log: a pvc:// claim's folder as mounted, s3:// as it is."""
    log = cascade.spec.escalation_log
    if log is None or not log.enabled or not log.uri:
        return None
    location = ModelUri.parse(log.uri)
    if location.scheme == "pvc":
        return f"{ESCALATION_LOG_DIR}/{location.pvc_path}".rstrip("/")
    return log.uri


_Manifests = list[dict[str, Any]]


def _escalation_log_volumes(cascade: ModelCascade) -> tuple[_Manifests, _Manifests, _Manifests]:
    """(volumes, volumeMounts, envFrom): the log's claim mounted read-write; S3 credentials from their Secret."""
    log = cascade.spec.escalation_log
    if log is None or not log.enabled or not log.uri:
        return [], [], []
    location = ModelUri.parse(log.uri)
    volumes, mounts = [], []
    if location.scheme == "pvc" and location.pvc_claim:
        volumes.append({"name": ESCALATION_LOG_VOLUME, "persistentVolumeClaim": {"claimName": location.pvc_claim}})
        mounts.append({"name": ESCALATION_LOG_VOLUME, "mountPath": ESCALATION_LOG_DIR})
    env_from = [{"secretRef": {"name": log.credentials_secret}}] if log.credentials_secret else []
    return volumes, mounts, env_from


def _router_container(settings: OperatorSettings, secret_mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """`kascade route` with its config and API keys mounted, its pod's name from the downward API, and probes."""
    probe = {"port": PORT_NAME}
    return {
        "name": "router",
        "image": settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["kascade", "route"],
        "args": ["--config", CONFIG_PATH, "--port", str(settings.router_port)],
        "ports": [
            {"name": PORT_NAME, "containerPort": settings.router_port, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "env": [
            {"name": ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": ENV_POD_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}, *secret_mounts],
        "resources": {"requests": {"cpu": settings.router_cpu, "memory": settings.router_memory}},
        "readinessProbe": {
            "httpGet": {"path": "/readyz", **probe},
            "periodSeconds": settings.readiness_probe_period_seconds,
            "timeoutSeconds": settings.probe_timeout_seconds,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", **probe},
            "periodSeconds": settings.liveness_probe_period_seconds,
            "timeoutSeconds": settings.probe_timeout_seconds,
            "failureThreshold": settings.liveness_probe_failure_threshold,
        },
    }


def build_router_deployment(
    cascade: ModelCascade, settings: OperatorSettings, *, configmap: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Deployment `{cascade}-router` running `kascade route --config /etc/kascade/router.yaml`.

    `configmap` is the output of `build_router_configmap` (built here when not
    given); its data's hash goes into the pod template's `kascade.dev/config-hash`
    annotation. POD_NAME and POD_NAMESPACE come from the downward API: the
    router writes its status slot with its pod's name (see `build_router_config`).
    """
    name = cascade.metadata.name
    configmap = configmap if configmap is not None else build_router_configmap(cascade, settings)
    selector = selector_labels(name, COMPONENT_ROUTER)
    secret_volumes, secret_mounts = _secret_volumes(cascade)
    log_volumes, log_mounts, log_env_from = _escalation_log_volumes(cascade)
    container = _router_container(settings, [*secret_mounts, *log_mounts])
    if log_env_from:
        container["envFrom"] = log_env_from
    pod = {
        "serviceAccountName": router_child_name(name),
        # The token is how the router writes its status slot.
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [
            {
                "name": "config",
                "configMap": {
                    "name": configmap["metadata"]["name"],
                    "items": [{"key": CONFIG_FILE, "path": CONFIG_FILE}],
                },
            },
            *secret_volumes,
            *log_volumes,
        ],
    }
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(cascade),
        "spec": {
            "replicas": cascade.spec.router.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": {**selector, PART_OF_LABEL: PART_OF, MANAGED_BY_LABEL: MANAGED_BY},
                    "annotations": {CONFIG_HASH_ANNOTATION: config_hash(configmap)},
                },
                # Restricted, with the fsGroup that lets the router's UID write the log's claim.
                "spec": restricted(pod, settings),
            },
        },
    }
    return with_spec_hash(manifest)


def build_router_service(cascade: ModelCascade, settings: OperatorSettings) -> dict[str, Any]:
    """ClusterIP Service `{cascade}-router`: the cascade's endpoint (`endpoint_url`)."""
    manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(cascade),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(cascade.metadata.name, COMPONENT_ROUTER),
            "ports": [{"name": PORT_NAME, "port": settings.router_port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }
    return with_spec_hash(manifest)


def build_router_metrics_service(cascade: ModelCascade, settings: OperatorSettings) -> dict[str, Any]:
    """Headless Service `{cascade}-router-metrics`: names the routers' metrics port for the ServiceMonitor.

    Headless (no virtual IP): Prometheus scrapes each pod, and the cascade's
    endpoint stays the one Service that clients reach, without the metrics port.
    """
    del settings
    name = cascade.metadata.name
    manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**_metadata(cascade), "name": router_metrics_service_name(name)},
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(name, COMPONENT_ROUTER),
            "ports": [
                {"name": METRICS_PORT_NAME, "port": METRICS_PORT, "targetPort": METRICS_PORT_NAME, "protocol": "TCP"}
            ],
        },
    }
    return with_spec_hash(manifest)


def build_router_service_account(cascade: ModelCascade, settings: OperatorSettings) -> dict[str, Any]:
    """ServiceAccount `{cascade}-router`, the identity the router writes its status slot with."""
    del settings
    return with_spec_hash({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(cascade)})


def build_router_role(cascade: ModelCascade, settings: OperatorSettings) -> dict[str, Any]:
    """Role `{cascade}-router`: get and patch the status of this one ModelCascade, nothing else."""
    del settings
    manifest = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(cascade),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [cascade.metadata.name],
                "verbs": ["get", "patch"],
            }
        ],
    }
    return with_spec_hash(manifest)


def build_router_role_binding(cascade: ModelCascade, settings: OperatorSettings) -> dict[str, Any]:
    """RoleBinding `{cascade}-router`: the router's ServiceAccount to its Role."""
    del settings
    name = router_child_name(cascade.metadata.name)
    manifest = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(cascade),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": cascade_namespace(cascade)}],
    }
    return with_spec_hash(manifest)
