"""One pass of the garbage collector and the namespace controller over the store.

- a dependent whose owners (by uid) are all gone is deleted (background);
- an owner deleted with `propagationPolicy=Foreground` waits (finalizer
  `foregroundDeletion`) until its dependents are gone;
- `propagationPolicy=Orphan` (finalizer `orphan`) strips the owner references
  from the dependents, then lets the owner go;
- a terminating namespace has its contents deleted, then goes itself.

`GarbageCollector` (controllers.py) runs passes until one writes nothing.
"""

from __future__ import annotations

import collections
import copy
from typing import Any

from kascade.testing.kinds import Kind
from kascade.testing.store import Store
from kascade.testing.watches import DELETED, MODIFIED

Dependents = dict[str, list[tuple[Kind, dict[str, Any]]]]


def collect_garbage(store: Store) -> int:
    """One pass; returns how many writes it made."""
    writes = _finish_propagation(store)
    writes += _delete_orphaned_dependents(store)
    writes += _empty_terminating_namespaces(store)
    return writes


def _finish_propagation(store: Store) -> int:
    """Owners being deleted with the `orphan` or `foregroundDeletion` finalizer: act on their dependents."""
    writes = 0
    live = store.by_uid()
    dependents: Dependents = collections.defaultdict(list)
    for kind, obj in store.all_objects():
        for ref in obj["metadata"].get("ownerReferences") or []:
            dependents[ref.get("uid")].append((kind, obj))
    for uid, (kind, obj) in live.items():
        meta = obj["metadata"]
        if not meta.get("deletionTimestamp"):
            continue
        finalizers = meta.get("finalizers") or []
        if "orphan" in finalizers:
            writes += _orphan_dependents(store, uid, dependents.get(uid, []))
            store.remove_finalizer(kind, obj, "orphan")
            writes += 1
        elif "foregroundDeletion" in finalizers:
            writes += _delete_in_foreground(store, kind, obj, dependents.get(uid, []))
    return writes


def _orphan_dependents(store: Store, uid: str, dependents: list[tuple[Kind, dict[str, Any]]]) -> int:
    writes = 0
    for dep_kind, dep in dependents:
        current = store.get(dep_kind, dep["metadata"].get("namespace"), dep["metadata"]["name"])
        if current is not None:
            new = copy.deepcopy(current)
            new["metadata"]["ownerReferences"] = [
                r for r in current["metadata"].get("ownerReferences") or [] if r.get("uid") != uid
            ]
            if not new["metadata"]["ownerReferences"]:
                del new["metadata"]["ownerReferences"]
            store.commit(MODIFIED, dep_kind, current, new)
            writes += 1
    return writes


def _delete_in_foreground(
    store: Store, kind: Kind, owner: dict[str, Any], dependents: list[tuple[Kind, dict[str, Any]]]
) -> int:
    """Delete the dependents (in foreground too); once none is left, the owner's finalizer goes."""
    writes = 0
    remaining = [(k, d) for k, d in dependents if store.get(k, d["metadata"].get("namespace"), d["metadata"]["name"])]
    for dep_kind, dep in remaining:
        if not dep["metadata"].get("deletionTimestamp"):
            store.delete(dep_kind, dep["metadata"].get("namespace"), dep["metadata"]["name"], propagation="Foreground")
            writes += 1
    if not remaining:
        store.remove_finalizer(kind, owner, "foregroundDeletion")
        writes += 1
    return writes


def _delete_orphaned_dependents(store: Store) -> int:
    writes = 0
    live = store.by_uid()
    for kind, obj in list(store.all_objects()):
        meta = obj["metadata"]
        refs = meta.get("ownerReferences") or []
        if not refs or meta.get("deletionTimestamp"):
            continue
        orphaned = all(not _owner_present(ref, obj, live) for ref in refs)
        if orphaned and store.get(kind, meta.get("namespace"), meta["name"]) is not None:
            store.delete(kind, meta.get("namespace"), meta["name"], propagation="Background")
            writes += 1
    return writes


def _owner_present(
    ref: dict[str, Any], dependent: dict[str, Any], live: dict[str, tuple[Kind, dict[str, Any]]]
) -> bool:
    found = live.get(str(ref.get("uid")))
    if found is None:
        return False
    owner_kind, owner = found
    if owner.get("kind", owner_kind.kind) != ref.get("kind") or owner["metadata"]["name"] != ref.get("name"):
        return False
    # A namespaced owner is looked up in the dependent's namespace only.
    return not owner_kind.namespaced or owner["metadata"].get("namespace") == dependent["metadata"].get("namespace")


def _empty_terminating_namespaces(store: Store) -> int:
    writes = 0
    ns_kind = store.kinds.get("", "v1", "namespaces")
    assert ns_kind is not None
    for ns in store.list_objects(ns_kind, None):
        if not ns["metadata"].get("deletionTimestamp"):
            continue
        name = ns["metadata"]["name"]
        contents = [
            (kind, obj)
            for kind, obj in store.all_objects()
            if kind.namespaced and obj["metadata"].get("namespace") == name
        ]
        for kind, obj in contents:
            if not obj["metadata"].get("deletionTimestamp"):
                store.delete(kind, name, obj["metadata"]["name"], propagation="Background")
                writes += 1
        if not contents and store.get(ns_kind, None, name) is not None:
            store.commit(DELETED, ns_kind, ns, ns)
            writes += 1
    return writes
