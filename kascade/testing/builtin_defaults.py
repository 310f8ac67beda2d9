"""The defaults a real server writes into built-in objects.

Deployment strategy and pod-template defaults, Service cluster IPs and port
protocols, Secret `stringData` folded into base64 `data`, canonical resource
quantities... What a client reads back differs from what it wrote, exactly as
on a cluster, so an operator that diffs desired against actual must cope.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from kascade.testing.errors import bad_request
from kascade.testing.kinds import Kind
from kascade.testing.quantity import QuantityError, canonical_quantity
from kascade.testing.schemas import SchemaTree


def canonicalize_quantities(tree: SchemaTree, data: Any) -> Any:
    """Rewrite every `resource.Quantity` in `data` canonically (400 on one that does not parse)."""
    return _quantities(tree, tree.root, data, "")


def _is_quantity(node: Any) -> bool:
    return isinstance(node, dict) and str(node.get("$ref", "")).endswith("pkg.api.resource.Quantity")


def _quantities(tree: SchemaTree, node: Any, data: Any, path: str) -> Any:
    if _is_quantity(node):
        if data is None:
            return data
        try:
            return canonical_quantity(data)
        except QuantityError as error:
            raise bad_request(f"{path}: {error}") from None
    resolved = tree.resolve(node)
    if isinstance(data, dict):
        properties = resolved.get("properties") or {}
        extra = resolved.get("additionalProperties")
        out = {}
        for key, value in data.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            out[key] = _quantities(tree, sub, value, f"{path}.{key}" if path else key) if sub is not None else value
        return out
    if isinstance(data, list) and isinstance(resolved.get("items"), dict):
        return [_quantities(tree, resolved["items"], item, f"{path}[{index}]") for index, item in enumerate(data)]
    return data


def _image_pull_policy(image: str) -> str:
    if "@" in image:
        return "IfNotPresent"
    tail = image.rsplit("/", 1)[-1]
    tag = tail.split(":", 1)[1] if ":" in tail else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _default_probe(probe: dict[str, Any] | None) -> None:
    if not isinstance(probe, dict):
        return
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)
    if isinstance(probe.get("httpGet"), dict):
        probe["httpGet"].setdefault("scheme", "HTTP")


def _default_container(container: dict[str, Any]) -> None:
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    if isinstance(container.get("image"), str):
        container.setdefault("imagePullPolicy", _image_pull_policy(container["image"]))
    container.setdefault("resources", {})
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
    for env in container.get("env") or []:
        field_ref = ((env or {}).get("valueFrom") or {}).get("fieldRef")
        if isinstance(field_ref, dict):
            field_ref.setdefault("apiVersion", "v1")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        _default_probe(container.get(probe))


def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    if spec.get("serviceAccountName") and not spec.get("serviceAccount"):
        spec["serviceAccount"] = spec["serviceAccountName"]  # the deprecated alias, still filled in
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            if isinstance(container, dict):
                _default_container(container)
    for volume in spec.get("volumes") or []:
        if not isinstance(volume, dict):
            continue
        for source in ("configMap", "secret"):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault("defaultMode", 420)
        if isinstance(volume.get("projected"), dict):
            volume["projected"].setdefault("defaultMode", 420)


def _default_template(owner: dict[str, Any]) -> None:
    template = (owner.get("spec") or {}).get("template")
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        default_pod_spec(template["spec"])


class Allocator:
    """Cluster IPs (10.96.0.0/12) and node ports (30000-32767), handed out in order."""

    def __init__(self) -> None:
        self._next_ip = 10
        self._next_port = 30000

    def cluster_ip(self) -> str:
        self._next_ip += 1
        return f"10.96.{self._next_ip // 256}.{self._next_ip % 256}"

    def node_port(self) -> int:
        self._next_port += 1
        return self._next_port


def default_builtin(kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None, allocator: Allocator) -> None:
    """Fill in a real server's defaults, in place."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else None
    match kind.plural:
        case "deployments" if spec is not None:
            spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            strategy = spec.setdefault("strategy", {})
            strategy.setdefault("type", "RollingUpdate")
            if strategy["type"] == "RollingUpdate":
                rolling = strategy.setdefault("rollingUpdate", {})
                rolling.setdefault("maxUnavailable", "25%")
                rolling.setdefault("maxSurge", "25%")
            _default_template(obj)
        case "statefulsets" if spec is not None:
            spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("podManagementPolicy", "OrderedReady")
            strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
            if strategy.get("type") == "RollingUpdate":
                strategy.setdefault("rollingUpdate", {"partition": 0})
            spec.setdefault("persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
            _default_template(obj)
        case "jobs" if spec is not None:
            spec.setdefault("parallelism", 1)
            spec.setdefault("completions", 1)
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
            spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
            _default_template(obj)
        case "cronjobs" if spec is not None:
            spec.setdefault("concurrencyPolicy", "Allow")
            spec.setdefault("suspend", False)
            spec.setdefault("successfulJobsHistoryLimit", 3)
            spec.setdefault("failedJobsHistoryLimit", 1)
            job_template = spec.get("jobTemplate") or {}
            if isinstance(job_template.get("spec"), dict):
                _default_template(job_template)
        case "pods" if spec is not None:
            default_pod_spec(spec)
            spec.setdefault("enableServiceLinks", True)
            spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
            spec.setdefault("priority", 0)
        case "services" if spec is not None:
            _default_service(spec, (old or {}).get("spec") or {}, allocator)
            if old is None:
                obj["status"] = {"loadBalancer": {}, **(obj.get("status") or {})}
        case "secrets":
            _default_secret(obj)
        case "namespaces":
            _default_namespace(obj)
        case "persistentvolumeclaims" if spec is not None:
            spec.setdefault("volumeMode", "Filesystem")
        case "customresourcedefinitions" if spec is not None:
            spec.setdefault("conversion", {"strategy": "None"})


def _default_namespace(obj: dict[str, Any]) -> None:
    name = (obj.get("metadata") or {}).get("name")
    if name:
        obj.setdefault("metadata", {}).setdefault("labels", {})["kubernetes.io/metadata.name"] = name
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


def _default_secret(obj: dict[str, Any]) -> None:
    """`stringData` is write-only: the server folds it into base64 `data` (and refuses `data` that is not base64)."""
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
    for key, value in (obj.get("data") or {}).items():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise bad_request(
                f'Secret in version "v1" cannot be handled as a Secret: illegal base64 data at data[{key!r}]'
            ) from None


def _default_service(spec: dict[str, Any], old_spec: dict[str, Any], allocator: Allocator) -> None:
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "port" in port:
                port.setdefault("targetPort", port["port"])
    if spec["type"] == "ExternalName":
        return
    # On update, allocated values the client left out are kept (as the real server's patchAllocatedValues).
    if not spec.get("clusterIP") and old_spec.get("clusterIP"):
        spec["clusterIP"] = old_spec["clusterIP"]
        spec.setdefault("clusterIPs", old_spec.get("clusterIPs") or [old_spec["clusterIP"]])
    if not spec.get("clusterIP"):
        spec["clusterIP"] = allocator.cluster_ip()
    spec.setdefault("clusterIPs", [spec["clusterIP"]])
    if spec["clusterIP"] != "None":
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
        old_ports = {
            (p.get("port"), p.get("protocol", "TCP")): p for p in old_spec.get("ports") or [] if isinstance(p, dict)
        }
        for port in spec.get("ports") or []:
            if isinstance(port, dict) and not port.get("nodePort"):
                previous = old_ports.get((port.get("port"), port.get("protocol")), {}).get("nodePort")
                port["nodePort"] = previous or allocator.node_port()
        if spec["type"] == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
