"""Watches: the history of committed changes, and the subscriptions that turn them into watch events.

Every commit becomes a `Change` in a bounded history (etcd's, in miniature): a
watch from a resourceVersion replays the changes after it, or gets 410 Expired
when the history no longer reaches back that far (after `compact()` or once
more than `limit` changes were kept). A `Watcher` applies the filtered-watch
rules of the real server: an object that starts matching its selectors is
ADDED, one that stops matching is DELETED.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kascade.testing import errors
from kascade.testing.kinds import Kind
from kascade.testing.selectors import FieldSelector, LabelSelector

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"


@dataclass(frozen=True)
class Change:
    """One committed change: what observers and watchers get."""

    type: str
    kind: Kind
    old: dict[str, Any] | None
    new: dict[str, Any]
    resource_version: int


@dataclass(eq=False)
class Watcher:
    """One watch stream's subscription: its filter, and a queue of events to send."""

    kind: Kind
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    queue: collections.deque[dict[str, Any] | None] = field(default_factory=collections.deque)
    wakeup: Callable[[], None] = lambda: None

    def matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(obj)

    def offer(self, change: Change) -> None:
        """Filtered watch semantics: an object that starts matching is ADDED, one that stops is DELETED."""
        was, now = self.matches(change.old), self.matches(change.new)
        if change.type == DELETED:
            event_type = DELETED if (now or was) else None
        elif change.type == ADDED:
            event_type = ADDED if now else None
        else:
            event_type = MODIFIED if was and now else ADDED if now else DELETED if was else None
        if event_type:
            self.queue.append({"type": event_type, "object": change.new})
            self.wakeup()

    def close(self) -> None:
        self.queue.append(None)
        self.wakeup()


class WatchHistory:
    """The kept changes (at most `limit`) and the open watches, by storage key."""

    def __init__(self, limit: int):
        self._changes: collections.deque[Change] = collections.deque()
        self._limit = limit
        self._floor = 0  # watches from a resourceVersion below this get 410 Expired
        self._watchers: dict[tuple[str, str], set[Watcher]] = collections.defaultdict(set)

    def record(self, change: Change) -> None:
        """Keep `change` (forgetting the oldest beyond the limit) and pass it to the open watches of its kind."""
        self._changes.append(change)
        while len(self._changes) > self._limit:
            self._floor = self._changes.popleft().resource_version
        for watcher in list(self._watchers[change.kind.storage]):
            watcher.offer(change)

    def subscribe(
        self,
        watcher: Watcher,
        resource_version: str | None,
        *,
        initial_events: bool,
        current: Callable[[], list[dict[str, Any]]],
    ) -> None:
        """Open a watch; queue what happened after `resource_version`, or the `current` objects when there is none."""
        if resource_version in (None, "", "0") or initial_events:
            for obj in current():
                watcher.queue.append({"type": ADDED, "object": obj})
        else:
            try:
                since = int(resource_version)
            except ValueError:
                raise errors.bad_request(f"invalid resource version: {resource_version!r}") from None
            if since < self._floor:
                raise errors.expired(f"too old resource version: {since} ({self._floor + 1})")
            for change in self._changes:
                if change.resource_version > since and change.kind.storage == watcher.kind.storage:
                    watcher.offer(change)
        self._watchers[watcher.kind.storage].add(watcher)

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers[watcher.kind.storage].discard(watcher)

    def close(self, storage: tuple[str, str] | None = None) -> None:
        """End the open watches (of one storage key, or all): each stream sees the end of its queue."""
        for key, watchers in list(self._watchers.items()):
            if storage is None or key == storage:
                for watcher in list(watchers):
                    watcher.close()
                watchers.clear()

    def since(self, resource_version: int) -> list[Change]:
        return [change for change in self._changes if change.resource_version > resource_version]

    def compact(self, resource_version: int) -> None:
        """Forget every change up to `resource_version`, as etcd compaction does."""
        self._changes.clear()
        self._floor = resource_version
