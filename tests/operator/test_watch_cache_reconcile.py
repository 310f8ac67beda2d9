"""The reconcile with the operator's watch cache, against the API-server stand-in.

A drift reconcile in steady state lists no child; a child someone else deletes or edits is seen by the watch and
put back; the cached view is what the lists say; a watch whose history the server forgot (410) lists again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow  # the API-server stand-in on loopback

pytest.importorskip("kopf")
pytest.importorskip("kmock")

from kascade.operator.builders import CHILD_KINDS
from kascade.operator.cascade_resource import parse_cascade
from kascade.operator.kube_api import KubeApi
from kascade.operator.kube_credentials import Credentials
from kascade.operator.observe import FoundByName, GpuProducts, observe
from kascade.operator.reconcile import Operator, reconcile
from kascade.operator.settings import OperatorSettings
from kascade.operator.watch_cache import Reflector, WatchCache
from kascade.testing import StandinApiServer

REPO = Path(__file__).resolve().parents[2]
LOGGER = logging.getLogger("test-watch-cache")
CHILD_PLURALS = {kind.plural for kind in CHILD_KINDS}


@pytest.fixture(scope="module")
def server() -> Iterator[StandinApiServer]:
    with StandinApiServer(crd_paths=[REPO / "crds"], controller_delay=0.01) as running:
        running.add_node("gpu-l4", labels={"nvidia.com/gpu.product": "NVIDIA-L4"})
        running.add_node("gpu-h100", labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
        for name, key in (("hf-token", "token"), ("chat-client-keys", "keys")):
            running.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {key: "x"}})
        yield running


def create_cascade(server: StandinApiServer, name: str) -> None:
    body = yaml.safe_load((REPO / "examples" / "chat-vllm-gpu.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": "default"}
    server.create(body)


def with_operator(credentials: Credentials, test: Callable[[Operator], Coroutine[Any, Any, None]]) -> None:
    """`test` with one operator that keeps its watch cache (and its Secrets found by name) between reconciles."""

    async def run() -> None:
        async with KubeApi(credentials) as api:
            cache = WatchCache(api, watch_timeout_s=2.0)
            operator = Operator(
                api=api, settings=OperatorSettings(), gpu_products=GpuProducts(), cache=cache, by_name=FoundByName(60)
            )
            try:
                await asyncio.wait_for(test(operator), timeout=60)
            finally:
                await cache.close()

    asyncio.run(run())


async def reconcile_now(operator: Operator, server: StandinApiServer, name: str) -> None:
    await reconcile(operator, server.get("modelcascades", name, "default"), LOGGER)


async def until(condition: Callable[[], Any]) -> None:
    while not condition():
        await asyncio.sleep(0.02)


def reflector(operator: Operator, plural: str) -> Reflector:
    assert operator.cache is not None
    (found,) = [r for (_, kind), r in operator.cache._reflectors.items() if kind == plural]
    return found


def cached(operator: Operator, plural: str, cascade: str, name: str) -> dict[str, Any] | None:
    """The object as the watch cache holds it now."""
    return next((obj for obj in reflector(operator, plural).objects(cascade) if obj["metadata"]["name"] == name), None)


async def ready(operator: Operator, server: StandinApiServer, name: str) -> None:
    """Reconciled until Ready: the children created, their readiness seen by the watch and written."""
    await reconcile_now(operator, server, name)

    def serving() -> bool:
        parts = ("small", "large", "router")
        return all(
            ((cached(operator, "deployments", name, f"{name}-{part}") or {}).get("status") or {}).get("readyReplicas")
            for part in parts
        )

    await until(serving)
    await reconcile_now(operator, server, name)


def test_a_steady_reconcile_reads_no_child_and_what_others_change_is_put_back(
    server: StandinApiServer, credentials: Credentials
):
    create_cascade(server, "cached")

    async def test(operator: Operator) -> None:
        await ready(operator, server, "cached")
        mark = server.mark()
        await reconcile_now(operator, server, "cached")
        await reconcile_now(operator, server, "cached")
        requests = [r for r in server.requests[mark:] if r.user_agent.startswith("kascade-operator/")]
        assert server.writes(since=mark) == []
        assert [str(r) for r in requests if r.resource in CHILD_PLURALS and r.verb != "watch"] == []
        assert [str(r) for r in requests if r.resource == "secrets"] == []  # found once, kept for the ttl

        server.delete("services", "cached-small", namespace="default")  # someone else deletes a child
        server.patch("configmaps", "cached-router", {"data": {"router.yaml": "edited: by hand\n"}}, namespace="default")
        await until(lambda: cached(operator, "services", "cached", "cached-small") is None)
        await until(
            lambda: (
                (cached(operator, "configmaps", "cached", "cached-router") or {}).get("data", {}).get("router.yaml")
                == "edited: by hand\n"
            )
        )
        mark = server.mark()
        await reconcile_now(operator, server, "cached")
        written = sorted(f"{r.verb} {r.resource}" for r in server.writes(since=mark) if r.resource in CHILD_PLURALS)
        assert written == ["create services", "update configmaps"]
        assert server.get("services", "cached-small", "default") is not None
        assert "edited" not in server.get("configmaps", "cached-router", "default")["data"]["router.yaml"]

    with_operator(credentials, test)


def test_the_cached_view_is_what_the_lists_say(server: StandinApiServer, credentials: Credentials):
    create_cascade(server, "same")

    async def test(operator: Operator) -> None:
        await ready(operator, server, "same")
        cascade = parse_cascade(server.get("modelcascades", "same", "default"))

        async def versions(cache: WatchCache | None) -> dict[tuple[str, str], str]:
            seen = await observe(operator.api, cascade, GpuProducts(), cache=cache)
            return {key: obj["metadata"]["resourceVersion"] for key, obj in seen.children.items()}

        listed = await versions(None)
        for _ in range(100):  # the watch's last events may still be on their way
            if await versions(operator.cache) == listed:
                break
            await asyncio.sleep(0.05)
        assert await versions(operator.cache) == listed
        assert ("Deployment", "same-router") in listed

    with_operator(credentials, test)


def test_a_deletion_no_watch_saw_is_found_by_the_list_after_410_expired(
    server: StandinApiServer, credentials: Credentials
):
    create_cascade(server, "compacted")

    def lose_the_watches_and_delete_unseen() -> None:
        """On the server's loop, at once: every watch ends without a bookmark (as a lost connection does), a child
        is deleted while none is open, and the history is compacted past it (the next watch gets 410 Expired)."""
        server.store.close_watchers()
        server.delete("services", "compacted-large", namespace="default")
        server.compact()

    async def test(operator: Operator) -> None:
        await ready(operator, server, "compacted")
        services = reflector(operator, "services")
        before = server.mark()
        server.call(lose_the_watches_and_delete_unseen)
        await until(lambda: [r for r in server.requests[before:] if r.verb == "list" and r.resource == "services"])
        await until(lambda: cached(operator, "services", "compacted", "compacted-large") is None)
        assert services.synced.is_set() and not services.failing
        assert cached(operator, "services", "compacted", "compacted-router") is not None
        await reconcile_now(operator, server, "compacted")
        assert server.get("services", "compacted-large", "default") is not None  # put back

    with_operator(credentials, test)
