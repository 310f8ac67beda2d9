"""What one reconcile must do to the children: a pure plan from desired and observed state.

KubeAI's way: snapshot what is there, compute the plan, then execute it. The
plan compares the `kascade.dev/spec-hash` annotation that each desired
manifest carries (set by the builders) with the one on the observed object;
it never diffs whole objects, because the API server adds defaults.

A reconcile of an unchanged cascade yields an empty plan: nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kascade.operator.labels import (
    CASCADE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SPEC_HASH_ANNOTATION,
    observed_spec_hash,
)

ChildKey = tuple[str, str]
"""(kind, name): how children are identified (all of a cascade's children share its namespace)."""


def child_key(manifest: Mapping[str, Any]) -> ChildKey:
    """(kind, metadata.name) of a manifest."""
    return (manifest["kind"], manifest["metadata"]["name"])


def index_children(objects: Iterable[Mapping[str, Any]]) -> dict[ChildKey, dict[str, Any]]:
    """Observed objects (plain dicts as the API returns them) keyed by `child_key`."""
    return {child_key(obj): dict(obj) for obj in objects}


@dataclass(frozen=True)
class ChildRef:
    """An object to delete: enough to address it with the API (namespace is the cascade's)."""

    api_version: str
    kind: str
    name: str


@dataclass(frozen=True)
class Plan:
    """What to write, in order. Execute `create`, then `patch`, then `delete`.

    - `create`: desired manifests with no observed object of that kind and name.
    - `patch`: desired manifests whose observed object carries a different (or
      no) spec hash; apply the whole desired manifest (server-side apply with
      force, or a replace), not a JSON merge patch, so removed fields go away.
    - `delete`: observed objects labelled as this cascade's children that are
      no longer desired (e.g. the Deployment of a removed tier).
    - `conflicts`: desired names taken by objects that are not ours (no
      managed-by/cascade labels); they are left alone and must be reported.
    """

    create: tuple[dict[str, Any], ...] = ()
    patch: tuple[dict[str, Any], ...] = ()
    delete: tuple[ChildRef, ...] = ()
    conflicts: tuple[ChildKey, ...] = field(default=())

    @property
    def empty(self) -> bool:
        """True when the children are up to date: the reconcile writes nothing."""
        return not (self.create or self.patch or self.delete)

    def summary(self) -> str:
        """One line for the log, e.g. `create Deployment/a-small; patch ConfigMap/a-router`."""
        parts = [
            *(f"create {kind}/{name}" for kind, name in map(child_key, self.create)),
            *(f"patch {kind}/{name}" for kind, name in map(child_key, self.patch)),
            *(f"delete {ref.kind}/{ref.name}" for ref in self.delete),
            *(f"conflict {kind}/{name}" for kind, name in self.conflicts),
        ]
        return "; ".join(parts) or "up to date"


def _labels(manifest: Mapping[str, Any]) -> Mapping[str, str]:
    return (manifest.get("metadata") or {}).get("labels") or {}


def _managed_by_us(observed: Mapping[str, Any], cascades: set[str]) -> bool:
    labels = _labels(observed)
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(CASCADE_LABEL) in cascades


def plan_children(
    desired: Iterable[Mapping[str, Any]],
    observed: Mapping[ChildKey, Mapping[str, Any]],
    *,
    cascade: str | None = None,
) -> Plan:
    """Compare the builders' output with what the cluster holds.

    `desired`: `builders.build_children(...)` (each carries its spec-hash
    annotation). `observed`: the cascade's children as listed by the handler
    (`index_children` of the objects matching `labels.owned_selector`, plus any
    object that takes a desired name). `cascade`: the value of the
    `kascade.dev/cascade` label that marks our children (`labels.label_value`
    of the cascade's name); taken from the desired manifests when not given.
    Only observed objects carrying our managed-by and cascade labels are ever
    patched or deleted.
    """
    desired = list(desired)
    owners: set[str] = (
        {cascade} if cascade is not None else {v for m in desired if (v := _labels(m).get(CASCADE_LABEL))}
    )
    desired_keys = set()
    create: list[dict[str, Any]] = []
    patch: list[dict[str, Any]] = []
    conflicts: list[ChildKey] = []
    for manifest in desired:
        key = child_key(manifest)
        desired_keys.add(key)
        wanted = ((manifest.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        if wanted is None:
            raise ValueError(f"{key[0]}/{key[1]} has no {SPEC_HASH_ANNOTATION} annotation; build it with a builder")
        current = observed.get(key)
        if current is None:
            create.append(dict(manifest))
        elif not _managed_by_us(current, owners):
            conflicts.append(key)
        elif observed_spec_hash(current) != wanted:
            patch.append(dict(manifest))
    delete = [
        ChildRef(api_version=obj.get("apiVersion", ""), kind=key[0], name=key[1])
        for key, obj in sorted(observed.items())
        if key not in desired_keys and _managed_by_us(obj, owners)
    ]
    return Plan(create=tuple(create), patch=tuple(patch), delete=tuple(delete), conflicts=tuple(conflicts))
