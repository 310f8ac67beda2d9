"""The stand-in's etcd: objects by kind, namespace and name, one resourceVersion counter, and watches.

`commit` is the only way an object changes: it stamps the next resourceVersion,
stores (or drops) the object, records the change for watches and tells the
observers (controllers, garbage collector). What may be committed is decided
above, by the write verbs of `Store` (store.py).
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Callable, Iterable
from typing import Any

from kascade.testing import errors
from kascade.testing.kinds import Kind, KindRegistry
from kascade.testing.selectors import FieldSelector, LabelSelector
from kascade.testing.watches import DELETED, Change, Watcher, WatchHistory


class Storage:
    """Objects by kind, namespace and name; one resourceVersion counter; watch history."""

    def __init__(self, kinds: KindRegistry, *, history_limit: int = 10_000):
        self.kinds = kinds
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = collections.defaultdict(dict)
        self._rv = 0
        self._watches = WatchHistory(history_limit)
        self.observers: list[Callable[[Change], None]] = []

    # --- reading ------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._objects[kind.storage].get((namespace or "", name))

    def require(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.get(kind, namespace, name)
        if obj is None:
            raise errors.not_found(kind.plural, kind.group, name)
        return obj

    def list_objects(
        self,
        kind: Kind,
        namespace: str | None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
    ) -> list[dict[str, Any]]:
        labels, fields = labels or LabelSelector(), fields or FieldSelector()
        items = []
        for (ns, _), obj in sorted(self._objects[kind.storage].items()):
            if namespace is not None and ns != namespace:
                continue
            meta = obj.get("metadata") or {}
            if labels.matches(meta.get("labels")) and fields.matches(obj):
                items.append(obj)
        return items

    def all_objects(self) -> Iterable[tuple[Kind, dict[str, Any]]]:
        for storage, objects in list(self._objects.items()):
            kinds = self.kinds.for_storage(storage)
            if kinds:
                for obj in list(objects.values()):
                    yield kinds[0], obj

    def by_uid(self) -> dict[str, tuple[Kind, dict[str, Any]]]:
        return {(obj["metadata"].get("uid")): (kind, obj) for kind, obj in self.all_objects()}

    # --- watching -----------------------------------------------------------------

    def watch(self, watcher: Watcher, resource_version: str | None, *, initial_events: bool = False) -> None:
        """Subscribe, and queue what happened after `resource_version` (or the current state, if none)."""
        self._watches.subscribe(
            watcher,
            resource_version,
            initial_events=initial_events,
            current=lambda: self.list_objects(watcher.kind, watcher.namespace, watcher.labels, watcher.fields),
        )

    def unwatch(self, watcher: Watcher) -> None:
        self._watches.unsubscribe(watcher)

    def close_watchers(self, storage: tuple[str, str] | None = None) -> None:
        self._watches.close(storage)

    def changes_since(self, resource_version: int) -> list[Change]:
        """The committed changes after `resource_version` that the watch history still holds."""
        return self._watches.since(resource_version)

    def compact(self) -> None:
        """Forget the watch history, as etcd compaction does: older resourceVersions now get 410 Gone."""
        self._watches.compact(self._rv)

    # --- committing ---------------------------------------------------------------

    def commit(self, change_type: str, kind: Kind, old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
        """Store `new` (drop it, for DELETED) at the next resourceVersion; watches and observers see the change."""
        self._rv += 1
        new = copy.deepcopy(new)
        new["metadata"]["resourceVersion"] = str(self._rv)
        key = (new["metadata"].get("namespace") or "", new["metadata"]["name"])
        if change_type == DELETED:
            self._objects[kind.storage].pop(key, None)
        else:
            self._objects[kind.storage][key] = new
        change = Change(change_type, kind, old, new, self._rv)
        self._watches.record(change)
        for observer in list(self.observers):
            observer(change)
        return new

    def remove_storage(self, kind: Kind) -> None:
        """A CRD went away: its objects go too (DELETED events), and watches on it end."""
        for obj in list(self._objects.get(kind.storage, {}).values()):
            self.commit(DELETED, kind, obj, obj)
        self._objects.pop(kind.storage, None)
        self.close_watchers(kind.storage)
