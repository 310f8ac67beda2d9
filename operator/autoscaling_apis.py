"""Which autoscaling APIs the cluster serves: KEDA's ScaledObjects, an external metrics API.

Read by API discovery (`GET /apis/keda.sh/v1alpha1`, `GET
/apis/external.metrics.k8s.io/v1beta1`: every authenticated subject may read
discovery, so no RBAC rule is needed), at most once per `ttl_s` for every
cascade reconciled meanwhile. A group that is not served (404), or that
cannot be read, counts as absent: the operator then renders an HPA. What it
renders follows when KEDA is installed or removed: the next reconcile
replaces the HPA with a ScaledObject, or the other way round.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from kascade.operator.build_autoscaling import KEDA_API_VERSION, Autoscaler, choose_autoscaler
from kascade.operator.builders import CHILD_KINDS, KEDA_CHILD_KINDS, ChildKind
from kascade.operator.kube_api import ApiError, KubeApi
from kascade.operator.settings import OperatorSettings

log = logging.getLogger("kascade.operator")

EXTERNAL_METRICS_API_VERSION = "external.metrics.k8s.io/v1beta1"
DISCOVERY_CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class ServedApis:
    """What discovery found: KEDA's ScaledObjects, an external metrics API (KEDA serves one too)."""

    keda: bool = False
    external_metrics: bool = False

    def autoscaler(self, settings: OperatorSettings) -> Autoscaler:
        return choose_autoscaler(settings, keda=self.keda, external_metrics=self.external_metrics)

    @property
    def child_kinds(self) -> tuple[ChildKind, ...]:
        """The kinds a cascade's children are listed in: ScaledObjects only where KEDA serves them."""
        return (*CHILD_KINDS, *KEDA_CHILD_KINDS) if self.keda else CHILD_KINDS


@dataclass
class AutoscalingApis:
    """`ServedApis`, discovered at most once per `ttl_s`."""

    ttl_s: float = DISCOVERY_CACHE_SECONDS
    _value: ServedApis = field(default_factory=ServedApis)
    _at: float | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, api: KubeApi) -> ServedApis:
        async with self._lock:
            now = asyncio.get_running_loop().time()
            if self._at is None or now - self._at >= self.ttl_s:
                keda, external = await asyncio.gather(
                    _serves(api, KEDA_API_VERSION, "scaledobjects"), _serves(api, EXTERNAL_METRICS_API_VERSION)
                )
                self._value = ServedApis(keda=keda, external_metrics=external)
                self._at = now
            return self._value


async def _serves(api: KubeApi, api_version: str, resource: str | None = None) -> bool:
    """Whether the API server serves `api_version` (and `resource` in it)."""
    try:
        listing = await api.request("GET", f"/apis/{api_version}")
    except ApiError as error:
        if not error.not_found:
            log.warning("cannot discover %s (%s): taken as not served", api_version, error.message)
        return False
    if resource is None:
        return True
    return any(entry.get("name") == resource for entry in (listing or {}).get("resources") or [])
