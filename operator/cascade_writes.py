"""The operator's writes on a cascade: its status (one merge patch, only when it changes) and its Events."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from kascade.api import API_VERSION
from kascade.api.modelcascade import PLURAL
from kascade.operator.cascade_resource import plain
from kascade.operator.kube_api import ApiError, KubeApi
from kascade.operator.notices import Notice, transition_notices
from kascade.operator.status_patch import changes_status

log = logging.getLogger("kascade.operator")

STATUS_WRITE_ATTEMPTS = 4
_EVENT_MESSAGE_LIMIT = 1000

StatusComposer = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Target:
    """The resource being reconciled, as this reconcile first saw it."""

    body: Any  # kopf's body (events are posted on it)
    name: str
    namespace: str
    generation: int | None
    resource_version: str | None
    status: Mapping[str, Any]

    @classmethod
    def of(cls, body: Any) -> Target:
        meta = body.get("metadata") or {}
        return cls(
            body=body,
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            generation=meta.get("generation"),
            resource_version=meta.get("resourceVersion"),
            status=plain(body.get("status") or {}),
        )


def post(body: Any, notice: Notice) -> None:
    message = notice.message[:_EVENT_MESSAGE_LIMIT]
    try:
        if notice.type == "Warning":
            kopf.warn(body, reason=notice.reason, message=message)
        else:
            # kopf.info is filtered by the posting level (WARNING: kopf's own chatter stays off the
            # API); the operator's notable actions are posted regardless.
            kopf.event(body, type="Normal", reason=notice.reason, message=message)
    except LookupError:  # called outside a running operator (tests, tools): nowhere to post
        log.info("%s %s: %s", notice.type, notice.reason, message)


async def write_status(api: KubeApi, target: Target, compose: StatusComposer) -> dict[str, Any] | None:
    """Compose the status patch and write it if it changes anything; the patch written, or None.

    The write carries the observed resourceVersion as a precondition: when the
    object moved on (a router wrote its slot, the spec changed), the API
    server says 409 and the status is re-read and recomposed, so a write is
    never based on stale slots or stale totals. Events for the condition
    changes written are posted on the resource.
    """
    status, resource_version = target.status, target.resource_version
    for _ in range(STATUS_WRITE_ATTEMPTS):
        patch = await compose(status)
        if not changes_status(status, patch):
            return None
        try:
            await api.patch_status(
                API_VERSION,
                PLURAL,
                target.name,
                namespace=target.namespace,
                status_patch=patch,
                resource_version=resource_version,
            )
        except ApiError as error:
            if not error.conflict:
                raise
        else:
            for notice in transition_notices(status.get("conditions") or [], patch.get("conditions") or []):
                post(target.body, notice)
            return patch
        fresh = await api.get(API_VERSION, PLURAL, target.name, namespace=target.namespace)
        if fresh is None:
            return None  # deleted meanwhile
        status, resource_version = fresh.get("status") or {}, fresh["metadata"].get("resourceVersion")
    raise kopf.TemporaryError("the status kept changing under the operator; trying again", delay=1)
