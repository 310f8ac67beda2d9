"""What the cluster holds for a cascade: its children, the Secrets it names, the GPU types nodes offer,
the access modes of the claims its pods share.

Reads only, through `KubeApi`, concurrently; what to read comes from the pure
`cluster_needs` and `conditions.shared_claims`. A forbidden optional read
(nodes, a Secret, a claim) degrades to "unknown" with a warning in the log
instead of failing the reconcile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kascade.api.modelcascade import ModelCascade
from kascade.operator.build_tier import GPU_PRODUCT_LABEL, cascade_namespace
from kascade.operator.builders import CHILD_KINDS
from kascade.operator.cluster_needs import referenced_secrets, wants_gpu_products
from kascade.operator.kube_api import ApiError, KubeApi, plural_of
from kascade.operator.labels import COMPONENT_ROUTER, owned_selector, selector_labels, selector_string
from kascade.operator.plan import ChildKey, child_key, index_children
from kascade.operator.problems import shared_claims

log = logging.getLogger("kascade.operator")

NODE_CACHE_SECONDS = 10.0  # one node list serves every cascade reconciled within this time


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
class Observation:
    children: dict[ChildKey, dict[str, Any]]
    secrets: dict[str, Collection[str]]
    gpu_products: frozenset[str] | None
    claim_modes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # claim -> access modes (found, readable)


async def _secret_keys(api: KubeApi, namespace: str, name: str, wanted: set[str]) -> Collection[str] | None:
    try:
        secret = await api.get("v1", "secrets", name, namespace=namespace)
    except ApiError as error:
        if error.forbidden:
            log.warning("cannot read Secret %s/%s (%s): assumed present", namespace, name, error.message)
            return wanted
        raise
    if secret is None:
        return None
    return set(secret.get("data") or {}) | set(secret.get("stringData") or {})


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


async def observe(api: KubeApi, cascade: ModelCascade, gpu_products: GpuProducts) -> Observation:
    """What the cluster holds for `cascade`, read concurrently."""
    namespace = cascade_namespace(cascade)
    selector = selector_string(owned_selector(cascade.metadata.name))
    wanted = referenced_secrets(cascade)
    claims = list(shared_claims(cascade))

    async def nothing() -> None:
        return None

    listed, secrets, products, modes = await asyncio.gather(
        asyncio.gather(
            *(
                api.list(kind.api_version, kind.plural, namespace=namespace, label_selector=selector, kind=kind.kind)
                for kind in CHILD_KINDS
            )
        ),
        asyncio.gather(*(_secret_keys(api, namespace, name, keys) for name, keys in wanted.items())),
        gpu_products.get(api) if wants_gpu_products(cascade) else nothing(),
        asyncio.gather(*(_claim_modes(api, namespace, claim) for claim in claims)),
    )
    children = index_children(obj for objects in listed for obj in objects)
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


async def live_router_pods(api: KubeApi, cascade: ModelCascade) -> list[str]:
    """Names of the router's pods that exist now, in any phase."""
    selector = selector_string(selector_labels(cascade.metadata.name, COMPONENT_ROUTER))
    pods = await api.list("v1", "pods", namespace=cascade_namespace(cascade), label_selector=selector, kind="Pod")
    return [pod["metadata"]["name"] for pod in pods]
