"""The kinds the stand-in serves: built-in ones, and those its CRDs define."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kascade.testing.selectors import BASE_FIELDS


@dataclass(frozen=True)
class Kind:
    """One served resource at one version, as discovery lists it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    # The scale subresource: where the desired replicas, observed replicas and label selector live.
    scale: tuple[str, str, str] | None = None
    # Whether metadata.generation is kept (kinds with a spec a controller observes).
    generation: bool = False
    # Custom resources: schema (openAPIV3Schema), printer columns; PUT needs a resourceVersion,
    # strategic merge patch is refused.
    custom: bool = False
    schema: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    printer_columns: tuple[Mapping[str, Any], ...] = field(default=(), compare=False, hash=False)
    singular: str = ""
    extra_fields: frozenset[str] = frozenset()  # field selectors beyond metadata.name/namespace
    verbs: tuple[str, ...] = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage(self) -> tuple[str, str]:
        """Where objects live: one store for all versions of a kind (no conversion between versions)."""
        return (self.group, self.plural)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        """`modelcascades.kascade.dev`, or `configmaps` for the core group (as in error messages)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()

    @property
    def field_selectors(self) -> frozenset[str]:
        return BASE_FIELDS | self.extra_fields

    def discovery(self) -> list[dict[str, Any]]:
        """Entries of the group-version's APIResourceList (the kind and its subresources)."""
        entry: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular_name,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
            "storageVersionHash": hashlib.sha256(f"{self.group}/{self.version}/{self.kind}".encode()).hexdigest()[:11],
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        entries = [entry]
        if self.status_subresource:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        if self.scale:
            entries.append(
                {
                    "name": f"{self.plural}/scale",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": ["get", "patch", "update"],
                }
            )
        return entries

    @property
    def subresources(self) -> frozenset[str]:
        return frozenset(
            name for name, present in (("status", self.status_subresource), ("scale", bool(self.scale))) if present
        )


def _k(group: str, version: str, plural: str, kind: str, **options: Any) -> Kind:
    return Kind(group, version, plural, kind, **options)


# Built-in kinds an operator touches. Status subresources and generation tracking as on a real server.
BUILTIN_KINDS: tuple[Kind, ...] = (
    _k(
        "",
        "v1",
        "namespaces",
        "Namespace",
        namespaced=False,
        short_names=("ns",),
        status_subresource=True,
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    ),
    _k("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _k("", "v1", "secrets", "Secret", extra_fields=frozenset({"type"})),
    _k(
        "",
        "v1",
        "services",
        "Service",
        short_names=("svc",),
        status_subresource=True,
        categories=("all",),
        verbs=("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"),
    ),
    _k("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _k("", "v1", "nodes", "Node", namespaced=False, short_names=("no",), status_subresource=True),
    _k(
        "",
        "v1",
        "events",
        "Event",
        short_names=("ev",),
        extra_fields=frozenset(
            {
                "involvedObject.kind",
                "involvedObject.name",
                "involvedObject.namespace",
                "involvedObject.uid",
                "reason",
                "type",
                "source",
            }
        ),
    ),
    _k(
        "",
        "v1",
        "pods",
        "Pod",
        short_names=("po",),
        status_subresource=True,
        categories=("all",),
        generation=True,
        extra_fields=frozenset({"spec.nodeName", "status.phase", "spec.serviceAccountName"}),
    ),
    _k("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short_names=("pvc",), status_subresource=True),
    _k("", "v1", "endpoints", "Endpoints", short_names=("ep",)),
    _k(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        short_names=("deploy",),
        status_subresource=True,
        categories=("all",),
        generation=True,
        scale=(".spec.replicas", ".status.replicas", ".spec.selector"),
    ),
    _k(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        short_names=("rs",),
        status_subresource=True,
        categories=("all",),
        generation=True,
        scale=(".spec.replicas", ".status.replicas", ".spec.selector"),
    ),
    _k(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        short_names=("sts",),
        status_subresource=True,
        categories=("all",),
        generation=True,
        scale=(".spec.replicas", ".status.replicas", ".spec.selector"),
    ),
    _k("batch", "v1", "jobs", "Job", status_subresource=True, categories=("all",), generation=True),
    _k(
        "batch",
        "v1",
        "cronjobs",
        "CronJob",
        short_names=("cj",),
        status_subresource=True,
        categories=("all",),
        generation=True,
    ),
    _k(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        short_names=("pdb",),
        status_subresource=True,
        generation=True,
    ),
    _k(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        short_names=("hpa",),
        status_subresource=True,
        categories=("all",),
    ),
    _k(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "Ingress",
        short_names=("ing",),
        status_subresource=True,
        generation=True,
    ),
    _k("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short_names=("netpol",), generation=True),
    _k("coordination.k8s.io", "v1", "leases", "Lease"),
    _k("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _k("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _k("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    _k("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    _k(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        short_names=("crd", "crds"),
        status_subresource=True,
        generation=True,
        categories=("api-extensions",),
    ),
)

CRD_KIND = next(kind for kind in BUILTIN_KINDS if kind.plural == "customresourcedefinitions")


def _crd_scale(scale: Mapping[str, Any] | None) -> tuple[str, str, str] | None:
    if not scale:
        return None
    return (
        scale.get("specReplicasPath", ".spec.replicas"),
        scale.get("statusReplicasPath", ".status.replicas"),
        scale.get("labelSelectorPath", ""),
    )


def kinds_from_crd(crd: Mapping[str, Any]) -> list[Kind]:
    """The served versions of a CustomResourceDefinition, as kinds."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    kinds = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        kinds.append(
            Kind(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                status_subresource="status" in (version.get("subresources") or {}),
                scale=_crd_scale((version.get("subresources") or {}).get("scale")),
                generation=True,
                custom=True,
                schema=(version.get("schema") or {}).get("openAPIV3Schema")
                or {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
                extra_fields=frozenset(sf["jsonPath"].lstrip(".") for sf in version.get("selectableFields") or ()),
            )
        )
    return kinds


class KindRegistry:
    """Which kinds are served, looked up by URL parts; CRDs add and remove theirs."""

    def __init__(self, kinds: Iterable[Kind] = BUILTIN_KINDS):
        self._kinds: dict[tuple[str, str, str], Kind] = {}
        self._by_crd: dict[str, list[Kind]] = {}
        for kind in kinds:
            self._kinds[(kind.group, kind.version, kind.plural)] = kind

    def get(self, group: str, version: str, plural: str) -> Kind | None:
        return self._kinds.get((group, version, plural))

    def all(self) -> list[Kind]:
        return list(self._kinds.values())

    def for_storage(self, storage: tuple[str, str]) -> list[Kind]:
        return [kind for kind in self._kinds.values() if kind.storage == storage]

    def by_kind(self, api_version: str, kind_name: str) -> Kind | None:
        for kind in self._kinds.values():
            if kind.api_version == api_version and kind.kind == kind_name:
                return kind
        return None

    def lookup(self, name: str) -> Kind | None:
        """A kind by plural, `plural.group`, kind name or short name (first served version)."""
        for kind in self._kinds.values():
            if name in (kind.plural, kind.qualified, kind.kind, kind.singular_name, *kind.short_names):
                return kind
        return None

    def register_crd(self, crd: Mapping[str, Any]) -> list[Kind]:
        name = crd["metadata"]["name"]
        self.unregister_crd(name)
        kinds = kinds_from_crd(crd)
        for kind in kinds:
            self._kinds[(kind.group, kind.version, kind.plural)] = kind
        self._by_crd[name] = kinds
        return kinds

    def unregister_crd(self, name: str) -> list[Kind]:
        kinds = self._by_crd.pop(name, [])
        for kind in kinds:
            self._kinds.pop((kind.group, kind.version, kind.plural), None)
        return kinds

    def groups(self) -> list[tuple[str, list[str]]]:
        """(group, versions) in discovery order: built-in groups first, then CRD groups; core excluded."""
        order: dict[str, list[str]] = {}
        for kind in self._kinds.values():
            if kind.group == "":
                continue
            versions = order.setdefault(kind.group, [])
            if kind.version not in versions:
                versions.append(kind.version)
        return list(order.items())

    def versions_of(self, group: str) -> list[str]:
        return [version for name, versions in self.groups() if name == group for version in versions]

    def in_group_version(self, group: str, version: str) -> list[Kind]:
        return [kind for kind in self._kinds.values() if kind.group == group and kind.version == version]
