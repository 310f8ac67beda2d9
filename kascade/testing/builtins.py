"""What the API server adds to and refuses in objects, beyond their schema.

- `validate_metadata`: names, labels, annotations, owner references and
  finalizers, for every kind (the real server's ObjectMeta validation).
- `default_builtin`: the defaults a real server writes into built-in objects
  (Deployment strategy and pod-template defaults, Service cluster IPs and port
  protocols, Secret `stringData` folded into base64 `data`, canonical resource
  quantities...). What a client reads back differs from what it wrote, exactly
  as on a cluster, so an operator that diffs desired against actual must cope.
- `validate_builtin`: the semantic checks of the built-in kinds an operator
  writes (a Deployment's selector must match its template's labels and cannot
  change, a container needs an image, a Service needs ports...).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any

from kascade.testing.errors import Cause, bad_request
from kascade.testing.kinds import Kind
from kascade.testing.quantity import QuantityError, canonical_quantity
from kascade.testing.schemas import SchemaTree
from kascade.testing.selectors import selector_from_label_selector_object

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
STANDARD_FINALIZERS = frozenset({"kubernetes", "orphan", "foregroundDeletion"})
_ANNOTATIONS_MAX_BYTES = 256 * 1024

_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start "
    "and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end "
    "with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_DNS1035_MESSAGE = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, "
    "and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is "
    "'[a-z]([-a-z0-9]*[a-z0-9])?')"
)


def _invalid(field: str, value: Any, message: str) -> Cause:
    return Cause("FieldValueInvalid", f"Invalid value: {json.dumps(value)}: {message}", field)


def _required(field: str, detail: str = "") -> Cause:
    return Cause("FieldValueRequired", f"Required value{': ' + detail if detail else ''}", field)


def _forbidden(field: str, detail: str) -> Cause:
    return Cause("FieldValueForbidden", f"Forbidden: {detail}", field)


def _immutable(field: str, value: Any) -> Cause:
    return _invalid(field, value, "field is immutable")


# --- ObjectMeta -------------------------------------------------------------------


def _name_causes(kind: Kind, name: str) -> list[Cause]:
    if kind.plural in ("roles", "rolebindings", "clusterroles", "clusterrolebindings"):
        if name in (".", "..") or "/" in name or "%" in name:
            return [_invalid("metadata.name", name, "may not contain '/' or '%'")]
        return []
    if kind.plural == "namespaces":
        pattern, message, limit = DNS1123_LABEL, _LABEL_MESSAGE, 63
    elif kind.plural == "services":
        pattern, message, limit = DNS1035_LABEL, _DNS1035_MESSAGE, 63
    else:
        pattern, message, limit = DNS1123_SUBDOMAIN, _SUBDOMAIN_MESSAGE, 253
    causes = []
    if len(name) > limit:
        causes.append(_invalid("metadata.name", name, f"must be no more than {limit} characters"))
    if not pattern.match(name):
        causes.append(_invalid("metadata.name", name, message))
    return causes


def qualified_name_causes(field: str, key: str) -> list[Cause]:
    """A label/annotation key or finalizer: `[prefix/]name`, prefix a DNS subdomain, name at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    causes = []
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        causes.append(_invalid(field, key, "prefix part " + _SUBDOMAIN_MESSAGE))
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        causes.append(_invalid(field, key, "name part must consist of alphanumeric characters, '-', '_' or '.', "
                                           "and must start and end with an alphanumeric character, "
                                           "and must be no more than 63 characters"))
    return causes


def validate_metadata(kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    meta = obj.get("metadata") or {}
    causes: list[Cause] = []
    name = meta.get("name")
    if not name:
        causes.append(_required("metadata.name", "name or generateName is required"))
    else:
        causes += _name_causes(kind, name)
    for key, value in (meta.get("labels") or {}).items():
        causes += qualified_name_causes("metadata.labels", key)
        if not isinstance(value, str):
            raise bad_request(f"{kind.kind} in version \"{kind.version}\" cannot be handled as a {kind.kind}: "
                              f"json: cannot unmarshal {type(value).__name__} into Go struct field ObjectMeta.metadata.labels of type string")
        if len(value) > 63:
            causes.append(_invalid("metadata.labels", value, "must be no more than 63 characters"))
        elif not _LABEL_VALUE.match(value):
            causes.append(_invalid("metadata.labels", value, "a valid label must be an empty string or consist of "
                                   "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                                   "alphanumeric character"))
    annotations = meta.get("annotations") or {}
    for key, value in annotations.items():
        causes += qualified_name_causes("metadata.annotations", key.lower())
        if not isinstance(value, str):
            raise bad_request(f"{kind.kind} in version \"{kind.version}\" cannot be handled as a {kind.kind}: "
                              f"json: cannot unmarshal {type(value).__name__} into Go struct field ObjectMeta.metadata.annotations of type string")
    if sum(len(key) + len(value) for key, value in annotations.items() if isinstance(value, str)) > _ANNOTATIONS_MAX_BYTES:
        causes.append(Cause("FieldValueTooLong", f"Too long: must have at most {_ANNOTATIONS_MAX_BYTES} bytes", "metadata.annotations"))
    controllers = []
    for index, ref in enumerate(meta.get("ownerReferences") or []):
        where = f"metadata.ownerReferences[{index}]"
        for required in ("apiVersion", "kind", "name"):
            if not ref.get(required):
                causes.append(_invalid(f"{where}.{required}" if required != "apiVersion" else f"{where}.apiVersion",
                                       ref.get(required, ""), f"{required} must not be empty"))
        if not ref.get("uid"):
            causes.append(_invalid(f"{where}.uid", ref.get("uid", ""), "uid must not be empty"))
        if ref.get("controller"):
            controllers.append(ref)
    if len(controllers) > 1:
        names = ", ".join(f"{ref.get('kind')}/{ref.get('name')}" for ref in controllers)
        causes.append(_invalid("metadata.ownerReferences", meta.get("ownerReferences"),
                               f"Only one reference can have Controller set to true. Found \"true\" in references for {names}"))
    finalizers = meta.get("finalizers") or []
    for index, finalizer in enumerate(finalizers):
        where = f"metadata.finalizers[{index}]"
        causes += qualified_name_causes(where, finalizer)
        if "/" not in finalizer and finalizer not in STANDARD_FINALIZERS:
            causes.append(_invalid(where, finalizer, "name is neither a standard finalizer name nor is it fully qualified"))
    if old is not None and (old.get("metadata") or {}).get("deletionTimestamp"):
        added = set(finalizers) - set((old.get("metadata") or {}).get("finalizers") or [])
        if added:
            causes.append(_forbidden("metadata.finalizers", f"no new finalizers can be added if the object is being deleted, found new finalizers {sorted(added)!r}"))
    return causes


# --- defaulting ------------------------------------------------------------------------


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
                    raise bad_request(f"Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at data[{key!r}]") from None
        case "namespaces":
            name = (obj.get("metadata") or {}).get("name")
            if name:
                obj.setdefault("metadata", {}).setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj.setdefault("status", {}).setdefault("phase", "Active")
        case "persistentvolumeclaims" if spec is not None:
            spec.setdefault("volumeMode", "Filesystem")
        case "customresourcedefinitions" if spec is not None:
            spec.setdefault("conversion", {"strategy": "None"})


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
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p for p in old_spec.get("ports") or [] if isinstance(p, dict)}
        for port in spec.get("ports") or []:
            if isinstance(port, dict) and not port.get("nodePort"):
                previous = old_ports.get((port.get("port"), port.get("protocol")), {}).get("nodePort")
                port["nodePort"] = previous or allocator.node_port()
        if spec["type"] == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)


# --- semantic validation -------------------------------------------------------------


def _validate_pod_spec(spec: Any, path: str, *, restart_policies: tuple[str, ...] | None = None) -> list[Cause]:
    if not isinstance(spec, dict):
        return [_required(path)]
    causes: list[Cause] = []
    containers = spec.get("containers")
    if not containers:
        causes.append(_required(f"{path}.containers"))
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            where = f"{path}.{group}[{index}]"
            if not isinstance(container, dict):
                continue
            name = container.get("name")
            if name and not DNS1123_LABEL.match(name):
                causes.append(_invalid(f"{where}.name", name, _LABEL_MESSAGE))
            if not container.get("image"):
                causes.append(_required(f"{where}.image"))
            for port_index, port in enumerate(container.get("ports") or []):
                number = (port or {}).get("containerPort")
                if not isinstance(number, int) or not 1 <= number <= 65535:
                    causes.append(_invalid(f"{where}.ports[{port_index}].containerPort", number, "must be between 1 and 65535, inclusive"))
            for env_index, env in enumerate(container.get("env") or []):
                if isinstance(env, dict) and not env.get("name"):
                    causes.append(_required(f"{where}.env[{env_index}].name"))
    if restart_policies and spec.get("restartPolicy") not in restart_policies:
        supported = ", ".join(json.dumps(policy) for policy in restart_policies)
        causes.append(Cause("FieldValueNotSupported", f"Unsupported value: {json.dumps(spec.get('restartPolicy'))}: supported values: {supported}", f"{path}.restartPolicy"))
    volume_names = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            for mount_index, mount in enumerate((container or {}).get("volumeMounts") or []):
                if isinstance(mount, dict) and mount.get("name") not in volume_names:
                    causes.append(Cause("FieldValueNotFound", f"Not found: {json.dumps(mount.get('name'))}",
                                        f"{path}.{group}[{index}].volumeMounts[{mount_index}].name"))
    return causes


def _validate_workload(obj: dict[str, Any], old: dict[str, Any] | None, restart_policies: tuple[str, ...]) -> list[Cause]:
    spec = obj.get("spec") or {}
    causes: list[Cause] = []
    selector = spec.get("selector")
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        causes.append(_required("spec.selector"))
        if selector is not None:
            causes.append(_invalid("spec.selector", selector, "empty selector is invalid for deployment"))
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    selects = bool(selector and (selector.get("matchLabels") or selector.get("matchExpressions")))
    if selects and not selector_from_label_selector_object(selector).matches(labels):
        causes.append(_invalid("spec.template.metadata.labels", labels, "`selector` does not match template `labels`"))
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        causes.append(_invalid("spec.replicas", replicas, "must be greater than or equal to 0"))
    causes += _validate_pod_spec(template.get("spec"), "spec.template.spec", restart_policies=restart_policies)
    if old is not None and (old.get("spec") or {}).get("selector") != selector:
        causes.append(_immutable("spec.selector", selector))
    return causes


def _validate_service(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    spec = obj.get("spec") or {}
    causes: list[Cause] = []
    ports = spec.get("ports") or []
    headless = spec.get("clusterIP") == "None"
    if spec.get("type") in ("ClusterIP", "NodePort", "LoadBalancer") and not ports and not headless:
        causes.append(_required("spec.ports"))
    names: set[str] = set()
    for index, port in enumerate(ports):
        if not isinstance(port, dict):
            continue
        number = port.get("port")
        if not isinstance(number, int) or not 1 <= number <= 65535:
            causes.append(_invalid(f"spec.ports[{index}].port", number, "must be between 1 and 65535, inclusive"))
        name = port.get("name")
        if len(ports) > 1 and not name:
            causes.append(_required(f"spec.ports[{index}].name"))
        if name:
            if not DNS1123_LABEL.match(name):
                causes.append(_invalid(f"spec.ports[{index}].name", name, _LABEL_MESSAGE))
            if name in names:
                causes.append(Cause("FieldValueDuplicate", f"Duplicate value: {json.dumps(name)}", f"spec.ports[{index}].name"))
            names.add(name)
    if old is not None:
        old_ip = (old.get("spec") or {}).get("clusterIP")
        if old_ip and spec.get("clusterIP") != old_ip and spec.get("type") != "ExternalName":
            causes.append(_immutable("spec.clusterIPs[0]", spec.get("clusterIP")))
    return causes


def _validate_config_keys(obj: dict[str, Any], kind: Kind) -> list[Cause]:
    causes: list[Cause] = []
    seen: set[str] = set()
    for section in ("data", "binaryData"):
        for key in obj.get(section) or {}:
            if len(key) > 253 or not _CONFIG_KEY.match(key):
                causes.append(_invalid(f"{section}[{key}]", key, "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"))
            if key in seen:
                causes.append(Cause("FieldValueDuplicate", f"Duplicate value: {json.dumps(key)}", f"{section}[{key}]"))
            seen.add(key)
    size = sum(len(json.dumps(value)) for section in ("data", "binaryData") for value in (obj.get(section) or {}).values())
    if size > 1024 * 1024:
        causes.append(Cause("FieldValueTooLong", f"Too long: must have at most {1024 * 1024} bytes", ""))
    return causes


def _validate_immutable_data(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    if old is None or not old.get("immutable"):
        return []
    causes = []
    for section in ("data", "binaryData"):
        if obj.get(section) != old.get(section):
            causes.append(_forbidden(section, "field is immutable when `immutable` is set"))
    if not obj.get("immutable"):
        causes.append(_forbidden("immutable", "field is immutable when `immutable` is set"))
    return causes


def _validate_crd(obj: dict[str, Any]) -> list[Cause]:
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    causes: list[Cause] = []
    expected = f"{names.get('plural')}.{spec.get('group')}"
    name = (obj.get("metadata") or {}).get("name")
    if name != expected:
        causes.append(_invalid("metadata.name", name, "must be spec.names.plural+\".\"+spec.group"))
    for required in ("plural", "kind"):
        if not names.get(required):
            causes.append(_required(f"spec.names.{required}"))
    versions = spec.get("versions") or []
    if not versions:
        causes.append(_required("spec.versions", "must have exactly one version marked as storage version"))
    elif sum(1 for version in versions if version.get("storage")) != 1:
        causes.append(_invalid("spec.versions", [v.get("name") for v in versions], "must have exactly one version marked as storage version"))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(Cause("FieldValueNotSupported", f'Unsupported value: {json.dumps(spec.get("scope"))}: supported values: "Cluster", "Namespaced"', "spec.scope"))
    return causes


def _validate_rbac(obj: dict[str, Any], old: dict[str, Any] | None, kind: Kind) -> list[Cause]:
    causes: list[Cause] = []
    if kind.plural in ("roles", "clusterroles"):
        for index, rule in enumerate(obj.get("rules") or []):
            if not (rule or {}).get("verbs"):
                causes.append(_required(f"rules[{index}].verbs", "verbs must contain at least one value"))
            if rule and not rule.get("nonResourceURLs") and "apiGroups" not in rule:
                causes.append(_required(f"rules[{index}].apiGroups", "resource rules must supply at least one api group"))
    else:
        role_ref = obj.get("roleRef") or {}
        if role_ref.get("kind") not in ("Role", "ClusterRole"):
            causes.append(Cause("FieldValueNotSupported", f'Unsupported value: {json.dumps(role_ref.get("kind"))}: supported values: "Role", "ClusterRole"', "roleRef.kind"))
        if old is not None and old.get("roleRef") != obj.get("roleRef"):
            causes.append(_immutable("roleRef", obj.get("roleRef")))
    return causes


Validator = Callable[[dict[str, Any], dict[str, Any] | None], list[Cause]]


def validate_builtin(kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    match kind.plural:
        case "deployments":
            return _validate_workload(obj, old, ("Always",))
        case "statefulsets":
            return _validate_workload(obj, old, ("Always",))
        case "jobs":
            spec = obj.get("spec") or {}
            causes = _validate_pod_spec((spec.get("template") or {}).get("spec"), "spec.template.spec", restart_policies=("OnFailure", "Never"))
            if old is not None and (old.get("spec") or {}).get("template") != spec.get("template"):
                causes.append(_immutable("spec.template", "..."))
            return causes
        case "pods":
            return _validate_pod_spec(obj.get("spec"), "spec")
        case "services":
            return _validate_service(obj, old)
        case "configmaps":
            return _validate_config_keys(obj, kind) + _validate_immutable_data(obj, old)
        case "secrets":
            causes = _validate_config_keys(obj, kind) + _validate_immutable_data(obj, old)
            if old is not None and old.get("type") != obj.get("type"):
                causes.append(_immutable("type", obj.get("type")))
            return causes
        case "customresourcedefinitions":
            return _validate_crd(obj)
        case "roles" | "clusterroles" | "rolebindings" | "clusterrolebindings":
            return _validate_rbac(obj, old, kind)
    return []
