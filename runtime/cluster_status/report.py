"""Router replicas report their ledger into their own slot of the ModelCascade's status.

Each router process writes its ABSOLUTE snapshot (`Ledger.counter_slot()`) to
`status.replicaCounters[<processId>]` with a JSON merge patch on the status
subresource. Absolute values make the write idempotent: a retried or repeated
patch cannot double count. A restarted process has a new processId and so a
new slot; the operator folds the slots into `status.traffic` and
`status.cost`, retiring the slots of processes that are gone.

Plain httpx with the pod's service-account token (`status_subresource.py`):
the runtime never imports kubernetes or kopf.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import httpx
from pydantic import Field

from kascade.api.counters import CounterSlot
from kascade.api.modelcascade import PLURAL
from kascade.api.status import REPLICA_COUNTERS
from kascade.runtime.cluster_status.subresource import StatusTarget

log = logging.getLogger("kascade.router.status")


class StatusReportConfig(StatusTarget):
    """Where a router replica reports; the operator renders it, with in-cluster defaults."""

    plural: ClassVar[str] = PLURAL

    pod_env: str = Field(default="POD_NAME", description="Environment variable holding this pod's name.")
    interval_seconds: float = Field(default=15.0, gt=0)


def replica_slot_patch(snapshot: CounterSlot | Mapping[str, Any], pod: str) -> dict[str, Any]:
    """The merge patch that writes one process's absolute numbers, and its pod, into its own slot.

    `snapshot`: the ledger's `CounterSlot`, or its JSON (`/stats`); what it
    holds is written as it is, checked against the slot's type.
    """
    slot = snapshot if isinstance(snapshot, CounterSlot) else CounterSlot.model_validate(snapshot)
    if slot.process_id is None:
        raise ValueError("a counter slot needs its processId: it names the slot")
    return {"status": {REPLICA_COUNTERS: {slot.process_id: slot.model_copy(update={"pod": pod}).to_wire()}}}


class StatusReporter:
    """Reports every `interval_seconds` and once more on shutdown; failures are logged, never fatal."""

    def __init__(
        self,
        config: StatusReportConfig,
        snapshot: Callable[[], CounterSlot | Mapping[str, Any]],
        *,
        on_status: Callable[[Mapping[str, Any]], Any] | None = None,
    ) -> None:
        """`on_status`: given the cascade's status as the API server answered each write (thresholds in force)."""
        self.config = config
        self._snapshot = snapshot
        self._on_status = on_status
        self._pod = os.environ.get(config.pod_env) or os.uname().nodename
        self.reports = 0  # successful writes, for /readyz-style introspection and tests

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(verify=self.config.tls_verify(), timeout=10.0)

    async def report_once(self, client: httpx.AsyncClient) -> bool:
        try:
            response = await client.patch(
                self.config.status_url(),
                json=replica_slot_patch(self._snapshot(), self._pod),
                headers=self.config.merge_patch_headers("kascade-router"),
            )
        except (httpx.HTTPError, RuntimeError, OSError) as error:
            log.warning("could not report counters to %s/%s: %s", self.config.namespace, self.config.name, error)
            return False
        if response.status_code >= 400:
            log.warning(
                "the API server refused the counters of %s/%s: HTTP %s %s",
                self.config.namespace,
                self.config.name,
                response.status_code,
                response.text[:300],
            )
            return False
        self.reports += 1
        if self._on_status is not None:
            try:
                status = response.json().get("status") or {}
            except (ValueError, AttributeError):
                status = {}
            self._on_status(status)
        return True

    async def run(self) -> None:
        """Report until cancelled; the final report on cancellation keeps a clean shutdown's last requests."""
        async with self._client() as client:
            try:
                while True:
                    await self.report_once(client)
                    await asyncio.sleep(self.config.interval_seconds)
            except asyncio.CancelledError:
                await asyncio.shield(self.report_once(client))
                raise
