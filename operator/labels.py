"""Names, labels and hashes of the children a ModelCascade owns.

- `common_labels(...)`: every child carries them (Kubernetes' recommended
  `app.kubernetes.io/*` labels plus `kascade.dev/cascade` and `kascade.dev/tier`).
- `selector_labels(...)`: the stable subset used in Deployment selectors and
  Service selectors. A Deployment's selector is immutable, so it never holds a
  version, a hash or anything else that changes over the object's life.
- `owned_selector(cascade)`: what the handler lists to find a cascade's children.
- `child_name(cascade, suffix)`: `{cascade}-{suffix}`, DNS-1035-safe (Services
  need it), at most 63 characters.
- `spec_hash(manifest)`: drift detection, stored in the `kascade.dev/spec-hash`
  annotation by the builders and compared by the plan.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from kascade import __version__

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
VERSION_LABEL = "app.kubernetes.io/version"
CASCADE_LABEL = "kascade.dev/cascade"
TIER_LABEL = "kascade.dev/tier"

APP_NAME = "kascade"
PART_OF = "kascade"
MANAGED_BY = "kascade-operator"

COMPONENT_TIER = "tier"
COMPONENT_ROUTER = "router"

SPEC_HASH_ANNOTATION = "kascade.dev/spec-hash"
CONFIG_HASH_ANNOTATION = "kascade.dev/config-hash"

MAX_NAME_LENGTH = 63  # DNS-1035 label: Services; also the limit of a label value
_HASH_LENGTH = 8

# Metadata the API server (or another controller) sets; never part of what we desire.
_SERVER_METADATA = frozenset(
    {
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
        "ownerReferences",
        "finalizers",
        "generateName",
    }
)
_IGNORED_ANNOTATIONS = frozenset({SPEC_HASH_ANNOTATION, "kubectl.kubernetes.io/last-applied-configuration"})


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_LENGTH]


def label_value(value: str) -> str:
    """`value` as a valid label value (<= 63 characters): long values keep a prefix and a hash.

    Cascade names may be 253 characters long; label values may not.
    """
    if len(value) <= MAX_NAME_LENGTH:
        return value
    prefix = value[: MAX_NAME_LENGTH - _HASH_LENGTH - 1].rstrip("-._")
    return f"{prefix}-{_short_hash(value)}"


def child_name(cascade: str, suffix: str) -> str:
    """`{cascade}-{suffix}` as a DNS-1035 label: lower case, starts with a letter, <= 63 characters.

    A ModelCascade's name is a DNS subdomain (dots allowed, may start with a
    digit), a Service name must be a DNS-1035 label: dots become dashes, a
    leading digit gets a `mc-` prefix, and a name that is too long keeps the
    suffix whole and shortens the cascade part, adding a hash of the full name
    so that two long cascades still get different names.
    `suffix` is a tier name (a DNS label of at most 40 characters) or `router`.
    """
    base = re.sub(r"[^a-z0-9-]", "-", cascade.lower())
    if not base[:1].isalpha():
        base = f"mc-{base}"
    name = f"{base}-{suffix}"
    if len(name) <= MAX_NAME_LENGTH:
        return name
    room = MAX_NAME_LENGTH - len(suffix) - _HASH_LENGTH - 2
    head = base[:room].rstrip("-")
    return f"{head}-{_short_hash(f'{cascade}/{suffix}')}-{suffix}"


def tier_child_name(cascade: str, tier: str) -> str:
    """Name of a tier's Deployment and Service: `{cascade}-{tier}`."""
    return child_name(cascade, tier)


def router_child_name(cascade: str) -> str:
    """Name of the router's Deployment, Service, ConfigMap, ServiceAccount, Role and RoleBinding."""
    return child_name(cascade, "router")


def selector_labels(cascade: str, component: str, tier: str | None = None) -> dict[str, str]:
    """The labels that select a component's pods; stable for the life of the object."""
    labels = {
        NAME_LABEL: APP_NAME,
        INSTANCE_LABEL: label_value(cascade),
        COMPONENT_LABEL: component,
        CASCADE_LABEL: label_value(cascade),
    }
    if tier is not None:
        labels[TIER_LABEL] = tier
    return labels


def common_labels(cascade: str, component: str, tier: str | None = None) -> dict[str, str]:
    """Every label a child carries: the selector labels plus part-of, managed-by and version."""
    return {
        **selector_labels(cascade, component, tier),
        PART_OF_LABEL: PART_OF,
        MANAGED_BY_LABEL: MANAGED_BY,
        VERSION_LABEL: __version__,
    }


def owned_selector(cascade: str) -> dict[str, str]:
    """Labels that find every child of one cascade (use as a label selector when listing)."""
    return {MANAGED_BY_LABEL: MANAGED_BY, CASCADE_LABEL: label_value(cascade)}


def selector_string(labels: Mapping[str, str]) -> str:
    """A label selector in kubectl's syntax: `a=1,b=2`."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def is_owned_by(manifest: Mapping[str, Any], cascade: str) -> bool:
    """Whether an observed object carries the labels of a child of `cascade`."""
    labels = (manifest.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in owned_selector(cascade).items())


def canonical_desired(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """`manifest` without status and without metadata the server or other controllers set."""
    result = {key: value for key, value in manifest.items() if key != "status"}
    metadata = dict(manifest.get("metadata") or {})
    for key in _SERVER_METADATA:
        metadata.pop(key, None)
    annotations = {k: v for k, v in (metadata.get("annotations") or {}).items() if k not in _IGNORED_ANNOTATIONS}
    if annotations:
        metadata["annotations"] = annotations
    else:
        metadata.pop("annotations", None)
    result["metadata"] = metadata
    return result


def stable_hash(value: Any) -> str:
    """sha256 of the canonical JSON of `value` (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def spec_hash(manifest: Mapping[str, Any]) -> str:
    """A stable hash of what we desire of a child, for drift detection.

    Computed on the DESIRED manifest (a builder's output) and stored in its
    `kascade.dev/spec-hash` annotation; the plan compares that annotation with
    the observed object's. Never recompute it on an observed object: the API
    server adds defaults, so the hash of what it returns always differs.
    Status, server-set metadata (uid, resourceVersion, ownerReferences, ...)
    and the annotation itself are left out, so adding owner references (kopf.adopt)
    does not change it.
    """
    return stable_hash(canonical_desired(manifest))


def with_spec_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with its `kascade.dev/spec-hash` annotation set (the manifest is changed and returned)."""
    digest = spec_hash(manifest)
    metadata = manifest.setdefault("metadata", {})
    metadata.setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = digest
    return manifest


def observed_spec_hash(manifest: Mapping[str, Any]) -> str | None:
    """The spec hash recorded on an observed object, if any."""
    return ((manifest.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
