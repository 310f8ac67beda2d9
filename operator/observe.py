"""What the cluster holds for a cascade: its children, the Secrets it names, the GPU types nodes offer,
the access modes of the claims its pods share.

Reads only, through `KubeApi`, concurrently; what to read comes from the pure
`cluster_needs` and `conditions.shared_claims`. A forbidden optional read
(nodes, a Secret, a claim) degrades to "unknown" with a warning in the log
instead of failing the reconcile.

A running operator spares the API server most of these reads: the children
and the router pods come from its watches (`watch_cache.WatchCache`), listed
only when the cache cannot answer; a Secret's keys and a claim's access modes,
once found, serve every cascade that names them for `FoundByName.ttl_s` (the
drift interval); the node list serves every cascade for `NODE_CACHE_SECONDS`.
What `observe` returns is the same snapshot either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kascade.api.modelcascade import ModelCascade
from kascade.operator.build_tier import GPU_PRODUCT_LABEL, cascade_namespace
from kascade.operator.builders import CHILD_KINDS, ChildKind
from kascade.operator.cluster_needs import referenced_secrets, wants_gpu_products
from kascade.operator.kube_api import ApiError, KubeApi, plural_of
from kascade.operator.labels import COMPONENT_ROUTER, owned_selector, selector_labels, selector_string
from kascade.operator.plan import ChildKey, child_key, index_children
from kascade.operator.problems import shared_claims
from kascade.operator.watch_cache import WatchCache

log = logging.getLogger("kascade.operator")

NODE_CACHE_SECONDS = 10.0  # one node list serves every cascade reconciled within this time

Found = TypeVar("Found")


@dataclass
class GpuProducts:
    """The `nvidia.com/gpu.product` values over the cluster's nodes, listed at most once per `ttl_s`.

    None when nodes cannot be listed (a namespace-scoped install without the
    node rule): the GPU-type check is then skipped, not failed.
    """

    ttl_s: float = NODE_CACHE_SECONDS
    _value: frozenset[str] | None = None
    _at: float | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, api: KubeApi) -> frozenset[str] | None:
        async with self._lock:
            now = asyncio.get_running_loop().time()
            if self._at is None or now - self._at >= self.ttl_s:
                self._value = await self._list(api)
                self._at = now
            return self._value

    @staticmethod
    async def _list(api: KubeApi) -> frozenset[str] | None:
        try:
            nodes = await api.list("v1", "nodes", label_selector=GPU_PRODUCT_LABEL, kind="Node")
        except ApiError as error:
            if error.forbidden:
                log.warning("cannot list nodes (%s): the GPU-type check is skipped", error.message)
                return None
            raise
        return frozenset(
            value
            for node in nodes
            if (value := ((node.get("metadata") or {}).get("labels") or {}).get(GPU_PRODUCT_LABEL))
        )


@dataclass
class FoundByName:
    """Objects read by name and found (a Secret's key names, a claim's access modes), each kept `ttl_s` and shared
    by every cascade that names it; concurrent reads of one name make one call. Not found is never kept: a Secret
    created after its cascade is seen by the next reconcile. `ttl_s` 0 reads every time."""

    ttl_s: float = 0.0
    _found: dict[tuple[str, ...], tuple[float, Any]] = field(default_factory=dict)
    _reading: dict[tuple[str, ...], asyncio.Future[Any]] = field(default_factory=dict)

    async def get(self, key: tuple[str, ...], read: Callable[[], Awaitable[Found | None]]) -> Found | None:
        if self.ttl_s <= 0:
            return await read()
        loop = asyncio.get_running_loop()
        kept = self._found.get(key)
        if kept is not None and loop.time() - kept[0] < self.ttl_s:
            value: Found = kept[1]
            return value
        pending = self._reading.get(key)
        if pending is None:
            pending = self._reading[key] = asyncio.ensure_future(read())
            pending.add_done_callback(lambda _: self._reading.pop(key, None))
        found: Found | None = await asyncio.shield(pending)
        if found is not None:
            self._keep(key, found, loop.time())
        return found

    def _keep(self, key: tuple[str, ...], found: Any, now: float) -> None:
        if len(self._found) >= 10_000:  # names no cascade asked for within the ttl go first
            self._found = {k: v for k, v in self._found.items() if now - v[0] < self.ttl_s}
        self._found[key] = (now, found)


@dataclass
class Observation:
    children: dict[ChildKey, dict[str, Any]]
    secrets: dict[str, Collection[str]]
    gpu_products: frozenset[str] | None
    claim_modes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # claim -> access modes (found, readable)


class Unreadable:
    """A Secret the operator may not read: assumed to hold whatever each cascade wants of it."""


async def _secret_keys(api: KubeApi, namespace: str, name: str) -> frozenset[str] | Unreadable | None:
    """The Secret's key names (values unread); None when it does not exist."""
    try:
        secret = await api.get("v1", "secrets", name, namespace=namespace)
    except ApiError as error:
        if error.forbidden:
            log.warning("cannot read Secret %s/%s (%s): assumed present", namespace, name, error.message)
            return Unreadable()
        raise
    if secret is None:
        return None
    return frozenset(secret.get("data") or {}) | frozenset(secret.get("stringData") or {})


async def _claim_modes(api: KubeApi, namespace: str, name: str) -> tuple[str, ...] | None:
    """The claim's access modes (as bound, else as asked for); None when it is missing or unreadable."""
    try:
        claim = await api.get("v1", "persistentvolumeclaims", name, namespace=namespace)
    except ApiError as error:
        if error.forbidden:
            log.warning(
                "cannot read PersistentVolumeClaim %s/%s (%s): its access mode is not checked",
                namespace,
                name,
                error.message,
            )
            return None
        raise
    if claim is None:
        return None
    modes = (claim.get("status") or {}).get("accessModes") or (claim.get("spec") or {}).get("accessModes") or []
    return tuple(modes)


async def _children(
    api: KubeApi, cascade: ModelCascade, cache: WatchCache | None, kinds: Sequence[ChildKind]
) -> list[dict[str, Any]]:
    """The cascade's children: from the watches when they can say, else one list per child kind; `kinds` beyond
    `CHILD_KINDS` (an optional API's, e.g. KEDA's ScaledObjects) are listed each time."""
    namespace = cascade_namespace(cascade)
    cached = await cache.children_of(namespace, cascade.metadata.name) if cache is not None else None
    to_list = [kind for kind in kinds if cached is None or kind not in CHILD_KINDS]
    selector = selector_string(owned_selector(cascade.metadata.name))
    listed = await asyncio.gather(
        *(
            api.list(kind.api_version, kind.plural, namespace=namespace, label_selector=selector, kind=kind.kind)
            for kind in to_list
        )
    )
    return [*(cached or []), *(obj for objects in listed for obj in objects)]


async def observe(
    api: KubeApi,
    cascade: ModelCascade,
    gpu_products: GpuProducts,
    *,
    cache: WatchCache | None = None,
    by_name: FoundByName | None = None,
    kinds: Sequence[ChildKind] = CHILD_KINDS,
) -> Observation:
    """What the cluster holds for `cascade`, read concurrently (the children from `cache` when it has them;
    `kinds`: the child kinds the cluster serves, `autoscaling_apis.ServedApis.child_kinds`)."""
    namespace = cascade_namespace(cascade)
    wanted = referenced_secrets(cascade)
    claims = list(shared_claims(cascade))
    by_name = by_name or FoundByName()

    async def nothing() -> None:
        return None

    async def secret(name: str, keys: set[str]) -> Collection[str] | None:
        found: frozenset[str] | Unreadable | None = await by_name.get(
            ("secrets", namespace, name), lambda: _secret_keys(api, namespace, name)
        )
        return keys if isinstance(found, Unreadable) else found

    def claim(name: str) -> Awaitable[tuple[str, ...] | None]:
        return by_name.get(("claims", namespace, name), lambda: _claim_modes(api, namespace, name))

    listed, secrets, products, modes = await asyncio.gather(
        _children(api, cascade, cache, kinds),
        asyncio.gather(*(secret(name, keys) for name, keys in wanted.items())),
        gpu_products.get(api) if wants_gpu_products(cascade) else nothing(),
        asyncio.gather(*(claim(name) for name in claims)),
    )
    children = index_children(listed)
    found = {name: keys for name, keys in zip(wanted, secrets, strict=True) if keys is not None}
    claim_modes = {
        claim: found_modes for claim, found_modes in zip(claims, modes, strict=True) if found_modes is not None
    }
    return Observation(children=children, secrets=found, gpu_products=products, claim_modes=claim_modes)


async def find_taken_names(
    api: KubeApi, desired: Iterable[Mapping[str, Any]], observed: Mapping[ChildKey, Mapping[str, Any]], namespace: str
) -> dict[ChildKey, dict[str, Any]]:
    """Objects that hold a desired name but were not listed as our children (someone else's)."""
    missing = [m for m in desired if child_key(m) not in observed]
    found = await asyncio.gather(
        *(
            api.get(m["apiVersion"], plural_of(m["apiVersion"], m["kind"]), m["metadata"]["name"], namespace=namespace)
            for m in missing
        )
    )
    taken = {}
    for manifest, obj in zip(missing, found, strict=True):
        if obj is not None:
            obj.setdefault("apiVersion", manifest["apiVersion"])
            obj.setdefault("kind", manifest["kind"])
            taken[child_key(manifest)] = obj
    return taken


async def live_router_pods(api: KubeApi, cascade: ModelCascade, cache: WatchCache | None = None) -> list[str]:
    """Names of the router's pods that exist now, in any phase (from `cache` when it can say)."""
    namespace = cascade_namespace(cascade)
    if cache is not None and (cached := await cache.router_pods(namespace, cascade.metadata.name)) is not None:
        return cached
    selector = selector_string(selector_labels(cascade.metadata.name, COMPONENT_ROUTER))
    pods = await api.list("v1", "pods", namespace=cascade_namespace(cascade), label_selector=selector, kind="Pod")
    return [pod["metadata"]["name"] for pod in pods]
