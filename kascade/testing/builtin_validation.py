"""The semantic checks of the built-in kinds an operator writes, beyond their schema.

A Deployment's selector must match its template's labels and cannot change, a
container needs an image, a Service needs ports, a ConfigMap's keys must be
valid, a RoleBinding's roleRef is immutable...
"""

from __future__ import annotations

import json
import re
from typing import Any

from kascade.testing.errors import Cause, forbidden_value, immutable_value, invalid_value, required_value
from kascade.testing.kinds import Kind
from kascade.testing.object_meta import DNS1123_LABEL, LABEL_MESSAGE
from kascade.testing.selectors import selector_from_label_selector_object

_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _validate_pod_spec(spec: Any, path: str, *, restart_policies: tuple[str, ...] | None = None) -> list[Cause]:
    if not isinstance(spec, dict):
        return [required_value(path)]
    causes: list[Cause] = []
    containers = spec.get("containers")
    if not containers:
        causes.append(required_value(f"{path}.containers"))
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            where = f"{path}.{group}[{index}]"
            if not isinstance(container, dict):
                continue
            name = container.get("name")
            if name and not DNS1123_LABEL.match(name):
                causes.append(invalid_value(f"{where}.name", name, LABEL_MESSAGE))
            if not container.get("image"):
                causes.append(required_value(f"{where}.image"))
            for port_index, port in enumerate(container.get("ports") or []):
                number = (port or {}).get("containerPort")
                if not isinstance(number, int) or not 1 <= number <= 65535:
                    causes.append(
                        invalid_value(
                            f"{where}.ports[{port_index}].containerPort",
                            number,
                            "must be between 1 and 65535, inclusive",
                        )
                    )
            for env_index, env in enumerate(container.get("env") or []):
                if isinstance(env, dict) and not env.get("name"):
                    causes.append(required_value(f"{where}.env[{env_index}].name"))
    if restart_policies and spec.get("restartPolicy") not in restart_policies:
        supported = ", ".join(json.dumps(policy) for policy in restart_policies)
        causes.append(
            Cause(
                "FieldValueNotSupported",
                f"Unsupported value: {json.dumps(spec.get('restartPolicy'))}: supported values: {supported}",
                f"{path}.restartPolicy",
            )
        )
    volume_names = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            for mount_index, mount in enumerate((container or {}).get("volumeMounts") or []):
                if isinstance(mount, dict) and mount.get("name") not in volume_names:
                    causes.append(
                        Cause(
                            "FieldValueNotFound",
                            f"Not found: {json.dumps(mount.get('name'))}",
                            f"{path}.{group}[{index}].volumeMounts[{mount_index}].name",
                        )
                    )
    return causes


def _validate_workload(
    obj: dict[str, Any], old: dict[str, Any] | None, restart_policies: tuple[str, ...]
) -> list[Cause]:
    spec = obj.get("spec") or {}
    causes: list[Cause] = []
    selector = spec.get("selector")
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        causes.append(required_value("spec.selector"))
        if selector is not None:
            causes.append(invalid_value("spec.selector", selector, "empty selector is invalid for deployment"))
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    selects = bool(selector and (selector.get("matchLabels") or selector.get("matchExpressions")))
    if selects and not selector_from_label_selector_object(selector).matches(labels):
        causes.append(
            invalid_value("spec.template.metadata.labels", labels, "`selector` does not match template `labels`")
        )
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        causes.append(invalid_value("spec.replicas", replicas, "must be greater than or equal to 0"))
    causes += _validate_pod_spec(template.get("spec"), "spec.template.spec", restart_policies=restart_policies)
    if old is not None and (old.get("spec") or {}).get("selector") != selector:
        causes.append(immutable_value("spec.selector", selector))
    return causes


def _validate_service(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    spec = obj.get("spec") or {}
    causes: list[Cause] = []
    ports = spec.get("ports") or []
    headless = spec.get("clusterIP") == "None"
    if spec.get("type") in ("ClusterIP", "NodePort", "LoadBalancer") and not ports and not headless:
        causes.append(required_value("spec.ports"))
    names: set[str] = set()
    for index, port in enumerate(ports):
        if not isinstance(port, dict):
            continue
        number = port.get("port")
        if not isinstance(number, int) or not 1 <= number <= 65535:
            causes.append(invalid_value(f"spec.ports[{index}].port", number, "must be between 1 and 65535, inclusive"))
        name = port.get("name")
        if len(ports) > 1 and not name:
            causes.append(required_value(f"spec.ports[{index}].name"))
        if name:
            if not DNS1123_LABEL.match(name):
                causes.append(invalid_value(f"spec.ports[{index}].name", name, LABEL_MESSAGE))
            if name in names:
                causes.append(
                    Cause("FieldValueDuplicate", f"Duplicate value: {json.dumps(name)}", f"spec.ports[{index}].name")
                )
            names.add(name)
    if old is not None:
        old_ip = (old.get("spec") or {}).get("clusterIP")
        if old_ip and spec.get("clusterIP") != old_ip and spec.get("type") != "ExternalName":
            causes.append(immutable_value("spec.clusterIPs[0]", spec.get("clusterIP")))
    return causes


def _validate_config_keys(obj: dict[str, Any], kind: Kind) -> list[Cause]:
    causes: list[Cause] = []
    seen: set[str] = set()
    for section in ("data", "binaryData"):
        for key in obj.get(section) or {}:
            if len(key) > 253 or not _CONFIG_KEY.match(key):
                causes.append(
                    invalid_value(
                        f"{section}[{key}]",
                        key,
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                    )
                )
            if key in seen:
                causes.append(Cause("FieldValueDuplicate", f"Duplicate value: {json.dumps(key)}", f"{section}[{key}]"))
            seen.add(key)
    size = sum(
        len(json.dumps(value)) for section in ("data", "binaryData") for value in (obj.get(section) or {}).values()
    )
    if size > 1024 * 1024:
        causes.append(Cause("FieldValueTooLong", f"Too long: must have at most {1024 * 1024} bytes", ""))
    return causes


def _validate_immutable_data(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    if old is None or not old.get("immutable"):
        return []
    causes = []
    for section in ("data", "binaryData"):
        if obj.get(section) != old.get(section):
            causes.append(forbidden_value(section, "field is immutable when `immutable` is set"))
    if not obj.get("immutable"):
        causes.append(forbidden_value("immutable", "field is immutable when `immutable` is set"))
    return causes


def _validate_crd(obj: dict[str, Any]) -> list[Cause]:
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    causes: list[Cause] = []
    expected = f"{names.get('plural')}.{spec.get('group')}"
    name = (obj.get("metadata") or {}).get("name")
    if name != expected:
        causes.append(invalid_value("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))
    for required in ("plural", "kind"):
        if not names.get(required):
            causes.append(required_value(f"spec.names.{required}"))
    versions = spec.get("versions") or []
    if not versions:
        causes.append(required_value("spec.versions", "must have exactly one version marked as storage version"))
    elif sum(1 for version in versions if version.get("storage")) != 1:
        causes.append(
            invalid_value(
                "spec.versions",
                [v.get("name") for v in versions],
                "must have exactly one version marked as storage version",
            )
        )
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(
            Cause(
                "FieldValueNotSupported",
                f'Unsupported value: {json.dumps(spec.get("scope"))}: supported values: "Cluster", "Namespaced"',
                "spec.scope",
            )
        )
    return causes


def _validate_rbac(obj: dict[str, Any], old: dict[str, Any] | None, kind: Kind) -> list[Cause]:
    causes: list[Cause] = []
    if kind.plural in ("roles", "clusterroles"):
        for index, rule in enumerate(obj.get("rules") or []):
            if not (rule or {}).get("verbs"):
                causes.append(required_value(f"rules[{index}].verbs", "verbs must contain at least one value"))
            if rule and not rule.get("nonResourceURLs") and "apiGroups" not in rule:
                causes.append(
                    required_value(f"rules[{index}].apiGroups", "resource rules must supply at least one api group")
                )
    else:
        role_ref = obj.get("roleRef") or {}
        if role_ref.get("kind") not in ("Role", "ClusterRole"):
            causes.append(
                Cause(
                    "FieldValueNotSupported",
                    f'Unsupported value: {json.dumps(role_ref.get("kind"))}: supported values: "Role", "ClusterRole"',
                    "roleRef.kind",
                )
            )
        if old is not None and old.get("roleRef") != obj.get("roleRef"):
            causes.append(immutable_value("roleRef", obj.get("roleRef")))
    return causes


def validate_builtin(kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    match kind.plural:
        case "deployments":
            return _validate_workload(obj, old, ("Always",))
        case "statefulsets":
            return _validate_workload(obj, old, ("Always",))
        case "jobs":
            spec = obj.get("spec") or {}
            causes = _validate_pod_spec(
                (spec.get("template") or {}).get("spec"), "spec.template.spec", restart_policies=("OnFailure", "Never")
            )
            if old is not None and (old.get("spec") or {}).get("template") != spec.get("template"):
                causes.append(immutable_value("spec.template", "..."))
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
                causes.append(immutable_value("type", obj.get("type")))
            return causes
        case "customresourcedefinitions":
            return _validate_crd(obj)
        case "roles" | "clusterroles" | "rolebindings" | "clusterrolebindings":
            return _validate_rbac(obj, old, kind)
    return []
