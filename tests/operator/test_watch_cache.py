"""The operator's watch cache, against a scripted API: what a list, a watch's events and its failures leave in it.

No socket: the fake API answers `list_versioned` and `watch` from a script. The
reconcile against the API-server stand-in with the cache is in
`test_watch_cache_reconcile.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from kascade.operator.kube_api import ApiError
from kascade.operator.labels import common_labels
from kascade.operator.observe import FoundByName
from kascade.operator.watch_cache import ROUTER_PODS, WatchCache, WatchedKind

CONFIGMAPS = WatchedKind("v1", "ConfigMap", "configmaps", "app.kubernetes.io/managed-by=kascade-operator")


def child(name: str, cascade: str = "a", version: str = "1", **extra: Any) -> dict[str, Any]:
    metadata = {"name": name, "namespace": "ns", "resourceVersion": version, "labels": common_labels(cascade, "router")}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {**metadata, **extra}}


Event = dict[str, Any]


@dataclass
class ScriptedApi:
    """Each list answers the next of `lists` (the last one again when they run out; an exception is raised). Each
    watch plays the next of `watches`: events, then the server ends it; an exception: refused. When the scripts
    run out, a watch stays open (and quiet) until the reflector is cancelled. With `hold`, watches wait for
    `released` first (so that a test sees the listed store before any event)."""

    lists: list[tuple[list[dict[str, Any]], str] | Exception]
    watches: list[list[Event] | Exception] = field(default_factory=list)
    listed: int = 0
    watched_from: list[str] = field(default_factory=list)
    hold: bool = False
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def list_versioned(self, *_: Any, **__: Any) -> tuple[list[dict[str, Any]], str]:
        answer = self.lists[min(self.listed, len(self.lists) - 1)]
        self.listed += 1
        if isinstance(answer, Exception):
            raise answer
        items, version = answer
        return [dict(item, metadata=dict(item["metadata"])) for item in items], version

    async def watch(self, *_: Any, resource_version: str, **__: Any) -> AsyncIterator[Event]:
        self.watched_from.append(resource_version)
        if self.hold:
            await self.released.wait()
        if not self.watches:
            await asyncio.Event().wait()  # open until the reflector is cancelled
        script = self.watches.pop(0)
        if isinstance(script, Exception):
            raise script
        for event in script:
            yield event


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def names(objects: list[dict[str, Any]] | None) -> list[str] | None:
    return None if objects is None else sorted(obj["metadata"]["name"] for obj in objects)


def test_the_first_read_waits_for_the_list_and_the_watch_keeps_the_store_current():
    api = ScriptedApi(
        lists=[([child("a-router"), child("a-small"), child("b-router", cascade="b")], "10")],
        watches=[
            [
                {"type": "ADDED", "object": child("a-large", version="11", managedFields=[{"manager": "x"}])},
                {"type": "MODIFIED", "object": child("a-router", version="12", annotations={"edited": "yes"})},
                {"type": "DELETED", "object": child("a-small", version="13")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "14"}}},
            ]
        ],
        hold=True,
    )

    async def test() -> None:
        cache = WatchCache(api, (CONFIGMAPS,))  # type: ignore[arg-type]  # the scripted API stands in for KubeApi
        assert names(await cache.children_of("ns", "a")) == ["a-router", "a-small"]
        api.released.set()
        (reflector,) = cache._reflectors.values()
        await until(lambda: names(list(reflector.objects("a"))) == ["a-large", "a-router"])
        objects = await cache.children_of("ns", "a")
        assert names(objects) == ["a-large", "a-router"]
        by_name = {obj["metadata"]["name"]: obj for obj in objects or []}
        assert by_name["a-router"]["metadata"]["annotations"] == {"edited": "yes"}
        assert "managedFields" not in by_name["a-large"]["metadata"]  # kept without it
        assert names(await cache.children_of("ns", "b")) == ["b-router"]  # another cascade's children stay apart
        assert api.listed == 1  # reads came from the store
        assert api.watched_from == ["10", "14"]  # the server ended the first watch: the next goes on from its bookmark
        await cache.close()

    run(test)


def test_an_expired_watch_lists_again_and_forgets_what_was_deleted_meanwhile():
    """After 410 Expired the fresh list replaces the store: a child deleted while no event came is gone too."""
    api = ScriptedApi(
        lists=[([child("a-router"), child("a-small")], "10"), ([child("a-router", version="20")], "21")],
        watches=[[{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}]],
        hold=True,
    )

    async def test() -> None:
        cache = WatchCache(api, (CONFIGMAPS,))  # type: ignore[arg-type]
        assert names(await cache.children_of("ns", "a")) == ["a-router", "a-small"]
        api.released.set()
        await until(lambda: api.listed == 2)
        assert names(await cache.children_of("ns", "a")) == ["a-router"]
        assert api.watched_from == ["10", "21"]  # the second watch goes on from the second list
        await cache.close()

    run(test)


def test_a_watch_the_server_ends_goes_on_from_the_last_version_seen_without_a_list():
    api = ScriptedApi(
        lists=[([child("a-router")], "10")],
        watches=[[{"type": "MODIFIED", "object": child("a-router", version="15")}], []],
    )

    async def test() -> None:
        cache = WatchCache(api, (CONFIGMAPS,))  # type: ignore[arg-type]
        await cache.children_of("ns", "a")
        await until(lambda: len(api.watched_from) >= 3)
        assert api.watched_from[:3] == ["10", "15", "15"]
        assert api.listed == 1
        await cache.close()

    run(test)


def test_a_view_that_has_not_listed_yet_is_never_taken_for_an_empty_one():
    never = asyncio.Event()

    class SlowApi(ScriptedApi):
        async def list_versioned(self, *_: Any, **__: Any) -> tuple[list[dict[str, Any]], str]:
            await never.wait()
            raise AssertionError("unreachable")

    async def test() -> None:
        cache = WatchCache(SlowApi(lists=[]), (CONFIGMAPS,), sync_wait_s=0.05)  # type: ignore[arg-type]
        assert await cache.children_of("ns", "a") is None  # None: the reconcile lists them itself
        await cache.close()

    run(test)


def test_a_refused_watch_sends_readers_to_the_server_until_a_list_succeeds_again():
    forbidden = ApiError(403, "Forbidden", 'cannot watch resource "configmaps"')
    api = ScriptedApi(
        lists=[([child("a-router")], "10"), ([child("a-router"), child("a-small")], "30")],
        watches=[forbidden],
        hold=True,
    )

    async def test() -> None:
        cache = WatchCache(api, (CONFIGMAPS,))  # type: ignore[arg-type]
        assert names(await cache.children_of("ns", "a")) == ["a-router"]
        (reflector,) = cache._reflectors.values()
        api.released.set()
        await until(lambda: reflector.failing)
        assert await cache.children_of("ns", "a") is None  # at once, no wait: the reconcile lists them itself
        await until(lambda: not reflector.failing)  # the retry lists again, then watches
        assert names(await cache.children_of("ns", "a")) == ["a-router", "a-small"]
        await cache.close()

    run(test)


def test_a_kind_the_server_does_not_serve_holds_nothing():
    api = ScriptedApi(lists=[ApiError(404, "NotFound", "the server could not find the requested resource")])

    async def test() -> None:
        cache = WatchCache(api, (CONFIGMAPS,))  # type: ignore[arg-type]
        assert await cache.children_of("ns", "a") == []
        await cache.close()

    run(test)


def test_router_pods_are_kept_by_name_and_labels_and_picked_by_the_routers_selector():
    router = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "a-router-x1", "labels": common_labels("a", "router"), "resourceVersion": "3"},
        "spec": {"containers": [{"name": "router"}]},
        "status": {"phase": "Running"},
    }
    other = {
        **router,
        "metadata": {**router["metadata"], "name": "b-router-y1", "labels": common_labels("b", "router")},
    }
    api = ScriptedApi(lists=[([router, other], "5")])

    async def test() -> None:
        cache = WatchCache(api, ())  # type: ignore[arg-type]
        assert await cache.router_pods("ns", "a") == ["a-router-x1"]
        (reflector,) = cache._reflectors.values()
        assert reflector.watched == ROUTER_PODS
        (kept,) = reflector.objects("a")
        assert set(kept) == {"apiVersion", "kind", "metadata"} and "resourceVersion" not in kept["metadata"]
        await cache.close()

    run(test)


def test_found_by_name_keeps_what_was_found_for_its_ttl_and_reads_what_was_missing_again():
    calls: list[str] = []
    present = {"hf-token"}

    async def read(name: str) -> frozenset[str] | None:
        calls.append(name)
        await asyncio.sleep(0.01)
        return frozenset({"token"}) if name in present else None

    async def test() -> None:
        found = FoundByName(ttl_s=0.2)
        results = await asyncio.gather(
            *(found.get(("secrets", "ns", "hf-token"), lambda: read("hf-token")) for _ in range(5))
        )
        assert results == [frozenset({"token"})] * 5 and calls == ["hf-token"]  # concurrent reads: one call
        assert await found.get(("secrets", "ns", "hf-token"), lambda: read("hf-token")) == frozenset({"token"})
        assert calls == ["hf-token"]  # within the ttl: no call
        assert await found.get(("secrets", "ns", "late"), lambda: read("late")) is None
        present.add("late")  # created after its cascade: the next read sees it
        assert await found.get(("secrets", "ns", "late"), lambda: read("late")) == frozenset({"token"})
        await asyncio.sleep(0.25)
        present.discard("hf-token")  # deleted: seen once the ttl is over
        assert await found.get(("secrets", "ns", "hf-token"), lambda: read("hf-token")) is None
        assert calls == ["hf-token", "late", "late", "hf-token"]

    run(test)


def test_found_by_name_without_a_ttl_reads_every_time():
    calls: list[int] = []

    async def read() -> int:
        calls.append(1)
        return 1

    async def test() -> None:
        found = FoundByName()
        for _ in range(3):
            assert await found.get(("claims", "ns", "logs"), read) == 1
        assert len(calls) == 3

    run(test)


@pytest.mark.parametrize("code", [500, 0])
def test_a_failed_list_is_retried_and_readers_list_themselves_meanwhile(code: int):
    api = ScriptedApi(lists=[ApiError(code, "Failed", "boom"), ([child("a-router")], "10")])

    async def test() -> None:
        cache = WatchCache(api, (CONFIGMAPS,), sync_wait_s=5)  # type: ignore[arg-type]
        first = await cache.children_of("ns", "a")
        assert first is None  # failed: no wait for the retry, the reconcile lists itself
        await until(lambda: api.listed == 2)
        assert names(await cache.children_of("ns", "a")) == ["a-router"]
        await cache.close()

    run(test)
