"""The apply layer: execute a `plan.Plan` against the API server.

Creates, then replaces (PUT with the observed `resourceVersion`: optimistic
concurrency, and fields removed from the desired manifest disappear, which a
merge patch would not do), then deletes. A race (409, 404) marks the report
stale (reconcile again from a fresh observation); a refusal is a failure line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kascade.operator.kube_api import ApiError, KubeApi, plural_of
from kascade.operator.plan import ChildKey, Plan, child_key
from kascade.operator.replacement import replacement


@dataclass
class ApplyReport:
    """What `apply_plan` did, and what failed (each failure as a readable line)."""

    created: list[ChildKey] = field(default_factory=list)
    replaced: list[ChildKey] = field(default_factory=list)
    deleted: list[ChildKey] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # refused writes (not races), one line each
    stale: bool = False  # a 409/404 race: someone else wrote first; reconcile again from a fresh observation

    @property
    def wrote(self) -> bool:
        return bool(self.created or self.replaced or self.deleted)

    def summary(self) -> str:
        parts = [
            *(f"created {kind}/{name}" for kind, name in self.created),
            *(f"updated {kind}/{name}" for kind, name in self.replaced),
            *(f"deleted {kind}/{name}" for kind, name in self.deleted),
        ]
        return "; ".join(parts) or "nothing"


def _describe(error: ApiError, verb: str, key: ChildKey) -> str:
    return f"{verb} {key[0]}/{key[1]} failed: HTTP {error.status} {error.reason}: {error.message}"


async def apply_plan(
    api: KubeApi, plan: Plan, observed: Mapping[ChildKey, Mapping[str, Any]], *, namespace: str
) -> ApplyReport:
    """Create, then replace, then delete, in the plan's order; one failure does not stop the rest."""
    report = ApplyReport()
    for manifest in plan.create:
        key = child_key(manifest)
        try:
            await api.create(manifest)
            report.created.append(key)
        except ApiError as error:
            if error.conflict:  # AlreadyExists: created since we looked
                report.stale = True
            else:
                report.failures.append(_describe(error, "create", key))
    for manifest in plan.patch:
        key = child_key(manifest)
        try:
            await api.replace(replacement(manifest, observed[key]))
            report.replaced.append(key)
        except ApiError as error:
            if error.conflict or error.not_found:  # changed or deleted since we looked
                report.stale = True
            else:
                report.failures.append(_describe(error, "update", key))
    for ref in plan.delete:
        key = (ref.kind, ref.name)
        uid = ((observed.get(key) or {}).get("metadata") or {}).get("uid")
        try:
            if await api.delete(
                ref.api_version, plural_of(ref.api_version, ref.kind), ref.name, namespace=namespace, uid=uid
            ):
                report.deleted.append(key)
        except ApiError as error:
            if error.conflict:  # replaced by a new object of that name since we looked
                report.stale = True
            else:
                report.failures.append(_describe(error, "delete", key))
    return report
