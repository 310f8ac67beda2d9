"""The cascades' children as watches keep them: one list, then a watch per kind and namespace, as informers do.

A drift reconcile reads a cascade's children from here instead of listing
each kind from the API server: in steady state it costs no request at all.
Each `Reflector` lists its kind once (with the operator's label selector),
then follows a watch from the list's resourceVersion; a 410 Expired (the
server no longer holds that version), a broken stream or a refused call is
answered with a fresh list that replaces the whole store, so an object deleted
while no watch was open is forgotten too.

When the cache cannot answer, `observe` reads the API server as before:

- a namespace's watches start on its first reconcile, which waits for their
  first lists (at most `sync_wait_s`); a view that has not listed yet is never
  taken for an empty one;
- a reflector whose last list or watch failed (a missing `watch` right, an
  unreachable server) answers None until its next list succeeds;
- a kind the server does not serve (404: a custom resource whose CRD is not
  installed) holds no objects, and is listed again every `retry_absent_s`.

The stores are read-only to their readers (`observe` copies what it keeps).
Every object lands without `metadata.managedFields` (the bulk of a real
server's metadata, read by nothing here); a router pod keeps only its name and
labels.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kascade.operator.builders import CHILD_KINDS
from kascade.operator.kube_api import ApiError, KubeApi
from kascade.operator.labels import (
    APP_NAME,
    CASCADE_LABEL,
    COMPONENT_LABEL,
    COMPONENT_ROUTER,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    label_value,
    owned_selector,
    selector_labels,
    selector_string,
)

log = logging.getLogger("kascade.operator")

SYNC_WAIT_S = 30.0  # how long a reconcile waits for its namespace's first lists before it reads the server itself
WATCH_TIMEOUT_S = 300.0  # each watch asks the server to end it after 5 to 10 minutes (client-go's spread)
RETRY_ABSENT_S = 30.0  # how often a kind the server does not serve is listed again
_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # after consecutive failures


def without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    (obj.get("metadata") or {}).pop("managedFields", None)
    return obj


def name_and_labels(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata") or {}
    kept = {key: metadata[key] for key in ("name", "namespace", "labels") if key in metadata}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": kept}


@dataclass(frozen=True)
class WatchedKind:
    """A kind to keep: where it is served, the server-side selector, what of each object is kept."""

    api_version: str
    kind: str
    plural: str
    label_selector: str
    keep: Callable[[dict[str, Any]], dict[str, Any]] = without_managed_fields


# Every child carries managed-by; the cascade's own label picks one cascade's children out of the store.
CHILDREN: tuple[WatchedKind, ...] = tuple(
    WatchedKind(kind.api_version, kind.kind, kind.plural, selector_string({MANAGED_BY_LABEL: MANAGED_BY}))
    for kind in CHILD_KINDS
)
# The router pods (their selector labels, which every router pod has carried): whose counter slots stay live.
ROUTER_PODS = WatchedKind(
    "v1",
    "Pod",
    "pods",
    selector_string({NAME_LABEL: APP_NAME, COMPONENT_LABEL: COMPONENT_ROUTER}),
    keep=name_and_labels,
)


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


class Reflector:
    """One kind in one namespace: listed, then followed by a watch; the objects by their cascade label."""

    def __init__(self, api: KubeApi, watched: WatchedKind, namespace: str, *, watch_timeout_s: float) -> None:
        self.api, self.watched, self.namespace = api, watched, namespace
        self.watch_timeout_s = watch_timeout_s
        self.synced = asyncio.Event()  # set while the store is the server's view (listed, and no failure since)
        self.answered = asyncio.Event()  # set once the first list succeeded or failed
        self.failing = False  # the last list or watch failed: readers go to the server until a list succeeds
        self._by_cascade: dict[str, dict[str, dict[str, Any]]] = {}  # cascade label -> name -> object
        self._cascade_of: dict[str, str] = {}  # name -> cascade label

    def objects(self, cascade_label: str) -> Iterable[dict[str, Any]]:
        return (self._by_cascade.get(cascade_label) or {}).values()

    def __len__(self) -> int:
        return len(self._cascade_of)

    # --- the store ----------------------------------------------------------------------------

    def _put(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        self._drop(name)
        owner = _labels(obj).get(CASCADE_LABEL, "")
        self._cascade_of[name] = owner
        self._by_cascade.setdefault(owner, {})[name] = obj

    def _drop(self, name: str) -> None:
        owner = self._cascade_of.pop(name, None)
        if owner is None:
            return
        members = self._by_cascade[owner]
        members.pop(name, None)
        if not members:
            del self._by_cascade[owner]

    def _replace(self, objects: Iterable[dict[str, Any]]) -> None:
        self._by_cascade, self._cascade_of = {}, {}
        for obj in objects:
            self._put(self.watched.keep(obj))
        self.failing = False
        self.synced.set()
        self.answered.set()

    # --- list and watch -----------------------------------------------------------------------

    async def run(self) -> None:
        """List, watch, and list again whenever the watch cannot go on; until cancelled."""
        failures = 0
        while True:
            try:
                version = await self._list()
                if version is None:  # not served: nothing to watch
                    await asyncio.sleep(RETRY_ABSENT_S)
                    continue
                while version is not None:  # None: expired, list again
                    version = await self._follow(version)
                    failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the loop outlives any failure: readers fall back to the server
                if not self.failing:
                    log.warning(
                        "the watch of %s in %s failed (%s): reconciles list them from the API server until it is back",
                        self.watched.plural,
                        self.namespace,
                        error,
                        exc_info=not isinstance(error, ApiError),  # an answer of the server needs no traceback
                    )
                self.failing = True
                self.synced.clear()
                self.answered.set()
                await asyncio.sleep(_BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)])
                failures += 1

    async def _list(self) -> str | None:
        """A fresh store from one list; its resourceVersion (None when the server does not serve the kind)."""
        watched = self.watched
        try:
            items, version = await self.api.list_versioned(
                watched.api_version,
                watched.plural,
                namespace=self.namespace,
                label_selector=watched.label_selector,
                kind=watched.kind,
            )
        except ApiError as error:
            if not error.not_found:
                raise
            self._replace(())
            return None
        self._replace(items)
        return version

    async def _follow(self, version: str) -> str | None:
        """Apply a watch's events from `version` until the server ends it: the version to go on from, None to list."""
        watched = self.watched
        async for event in self.api.watch(
            watched.api_version,
            watched.plural,
            namespace=self.namespace,
            label_selector=watched.label_selector,
            resource_version=version,
            timeout_s=self.watch_timeout_s * (1 + random.random()),
        ):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    return None
                raise ApiError(int(obj.get("code") or 500), str(obj.get("reason", "")), str(obj.get("message", "")))
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "DELETED":
                self._drop(obj["metadata"]["name"])
            elif kind in ("ADDED", "MODIFIED"):
                obj.setdefault("apiVersion", watched.api_version)
                obj.setdefault("kind", watched.kind)
                self._put(watched.keep(obj))
        return version


class WatchCache:
    """The reflectors of every namespace that has cascades, started on the namespace's first reconcile."""

    def __init__(
        self,
        api: KubeApi,
        children: Iterable[WatchedKind] = CHILDREN,
        *,
        sync_wait_s: float = SYNC_WAIT_S,
        watch_timeout_s: float = WATCH_TIMEOUT_S,
    ) -> None:
        self.api = api
        self.children = tuple(children)
        self.sync_wait_s = sync_wait_s
        self.watch_timeout_s = watch_timeout_s
        self._reflectors: dict[tuple[str, str], Reflector] = {}  # (namespace, plural) -> its reflector
        self._tasks: set[asyncio.Task[None]] = set()

    async def children_of(self, namespace: str, cascade: str) -> list[dict[str, Any]] | None:
        """Every child of `cascade` (the objects with its `labels.owned_selector`), or None: read the server."""
        reflectors = await self._synced(namespace, self.children)
        if reflectors is None:
            return None
        wanted = owned_selector(cascade)
        return [
            obj
            for reflector in reflectors
            for obj in reflector.objects(label_value(cascade))
            if all(_labels(obj).get(key) == value for key, value in wanted.items())
        ]

    async def router_pods(self, namespace: str, cascade: str) -> list[str] | None:
        """Names of the router pods of `cascade` that exist now, or None: read the server."""
        reflectors = await self._synced(namespace, (ROUTER_PODS,))
        if reflectors is None:
            return None
        wanted = selector_labels(cascade, COMPONENT_ROUTER)
        return [
            pod["metadata"]["name"]
            for pod in reflectors[0].objects(label_value(cascade))
            if all(_labels(pod).get(key) == value for key, value in wanted.items())
        ]

    def size(self) -> int:
        """How many objects the cache holds, over every namespace and kind."""
        return sum(len(reflector) for reflector in self._reflectors.values())

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reflectors.clear()

    async def _synced(self, namespace: str, kinds: Iterable[WatchedKind]) -> list[Reflector] | None:
        """The namespace's reflectors of `kinds` (started now if need be) once they all hold the server's view."""
        reflectors = [self._reflector(namespace, watched) for watched in kinds]
        waiting = [reflector.answered.wait() for reflector in reflectors if not reflector.answered.is_set()]
        if waiting:
            try:
                await asyncio.wait_for(asyncio.gather(*waiting), self.sync_wait_s)
            except TimeoutError:
                return None
        return reflectors if all(reflector.synced.is_set() for reflector in reflectors) else None

    def _reflector(self, namespace: str, watched: WatchedKind) -> Reflector:
        key = (namespace, watched.plural)
        reflector = self._reflectors.get(key)
        if reflector is None:
            reflector = self._reflectors[key] = Reflector(
                self.api, watched, namespace, watch_timeout_s=self.watch_timeout_s
            )
            task = asyncio.create_task(reflector.run(), name=f"kascade watch {watched.plural} in {namespace}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return reflector
