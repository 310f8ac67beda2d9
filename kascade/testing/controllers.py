"""The controllers a cluster runs that an operator depends on, reduced to what it observes.

- `DeploymentController`: shortly after a Deployment is created or changed,
  fills its status as the real controller does once the pods are up
  (replicas, updated/ready/available replicas, observedGeneration, conditions
  Available and Progressing). `hold_unready` keeps a named Deployment unready
  (pods never become ready; optionally past its progress deadline) so tests can
  drive an operator's Progressing/Degraded paths; `release` lets it become ready.
- `GarbageCollector`: after deletions (and writes that touch owner references
  or finalizers), runs collection passes (garbage_collection.py) until nothing changes:
  dependents of deleted owners go (background), Foreground and Orphan
  propagation, terminating namespaces are emptied.
- `CrdController`: registers the kinds of a created CRD, marks it Established,
  and drops the kinds and their objects when the CRD is deleted.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from kascade.testing.garbage_collection import collect_garbage
from kascade.testing.kinds import Kind
from kascade.testing.store import Store, now_rfc3339
from kascade.testing.watches import ADDED, DELETED, Change


@dataclass(frozen=True)
class Hold:
    ready_replicas: int = 0
    deadline_exceeded: bool = False


class DeploymentController:
    def __init__(self, store: Store, *, delay: float = 0.05):
        self.store = store
        self.delay = delay
        self.holds: dict[tuple[str, str], Hold] = {}
        self._scheduled: set[tuple[str, str]] = set()

    def observe(self, change: Change) -> None:
        if change.kind.group != "apps" or change.kind.plural != "deployments" or change.type == DELETED:
            return
        meta = change.new["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        old_spec = (change.old or {}).get("spec")
        old_generation = ((change.old or {}).get("metadata") or {}).get("generation")
        if change.type == ADDED or old_spec != change.new.get("spec") or old_generation != meta.get("generation"):
            self.schedule(*key)

    def schedule(self, namespace: str, name: str) -> None:
        if (namespace, name) in self._scheduled:
            return
        self._scheduled.add((namespace, name))
        asyncio.get_running_loop().call_later(self.delay, self._reconcile, namespace, name)

    def hold_unready(
        self, namespace: str, name: str, *, ready_replicas: int = 0, deadline_exceeded: bool = False
    ) -> None:
        self.holds[(namespace, name)] = Hold(ready_replicas, deadline_exceeded)
        self.schedule(namespace, name)

    def release(self, namespace: str, name: str) -> None:
        self.holds.pop((namespace, name), None)
        self.schedule(namespace, name)

    def _kind(self) -> Kind:
        kind = self.store.kinds.get("apps", "v1", "deployments")
        assert kind is not None
        return kind

    def _reconcile(self, namespace: str, name: str) -> None:
        self._scheduled.discard((namespace, name))
        kind = self._kind()
        deployment = self.store.get(kind, namespace, name)
        if deployment is None or deployment["metadata"].get("deletionTimestamp"):
            return
        status = self.desired_status(deployment, self.holds.get((namespace, name)), deployment.get("status") or {})
        self.store.write_status(kind, namespace, name, status)

    @staticmethod
    def desired_status(deployment: dict[str, Any], hold: Hold | None, current: dict[str, Any]) -> dict[str, Any]:
        spec = deployment.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        ready = replicas if hold is None else min(hold.ready_replicas, replicas)
        template_hash = hashlib.sha256(json.dumps(spec.get("template"), sort_keys=True).encode()).hexdigest()[:10]
        rs_name = f"{deployment['metadata']['name']}-{template_hash}"
        previous = {c.get("type"): c for c in current.get("conditions") or []}
        now = now_rfc3339()

        def condition(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
            before = previous.get(type_) or {}
            changed = before.get("status") != status
            return {
                "type": type_,
                "status": status,
                "lastUpdateTime": now
                if changed or before.get("reason") != reason
                else before.get("lastUpdateTime", now),
                "lastTransitionTime": now if changed else before.get("lastTransitionTime", now),
                "reason": reason,
                "message": message,
            }

        available = ready >= replicas  # maxUnavailable is not modelled: all replicas must be ready
        if available:
            available_condition = condition(
                "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability."
            )
        else:
            available_condition = condition(
                "Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability."
            )
        if hold is not None and hold.deadline_exceeded:
            progressing = condition(
                "Progressing", "False", "ProgressDeadlineExceeded", f'ReplicaSet "{rs_name}" has timed out progressing.'
            )
        elif available:
            progressing = condition(
                "Progressing", "True", "NewReplicaSetAvailable", f'ReplicaSet "{rs_name}" has successfully progressed.'
            )
        else:
            progressing = condition(
                "Progressing", "True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.'
            )
        status: dict[str, Any] = {"observedGeneration": deployment["metadata"].get("generation", 1)}
        # Zero counts are omitted, as the real controller's status omits them.
        for field, value in (
            ("replicas", replicas),
            ("updatedReplicas", replicas),
            ("readyReplicas", ready),
            ("availableReplicas", ready),
            ("unavailableReplicas", replicas - ready),
        ):
            if value:
                status[field] = value
        status["conditions"] = [available_condition, progressing]
        return status


class GarbageCollector:
    def __init__(self, store: Store):
        self.store = store
        self._scheduled = False

    def observe(self, change: Change) -> None:
        meta = change.new.get("metadata") or {}
        old_meta = (change.old or {}).get("metadata") or {}
        if (
            change.type == DELETED
            or meta.get("deletionTimestamp")
            or meta.get("ownerReferences") != old_meta.get("ownerReferences")
        ):
            self.schedule()

    def schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.run)

    def run(self) -> None:
        self._scheduled = False
        for _ in range(100):  # each pass may orphan further dependents
            if not collect_garbage(self.store):
                break


class CrdController:
    def __init__(self, store: Store):
        self.store = store

    def observe(self, change: Change) -> None:
        if change.kind.group != "apiextensions.k8s.io" or change.kind.plural != "customresourcedefinitions":
            return
        name = change.new["metadata"]["name"]
        if change.type == DELETED:
            kinds = self.store.kinds.unregister_crd(name)
            if kinds:
                self.store.remove_storage(kinds[0])
            return
        if change.old is not None and change.old.get("spec") == change.new.get("spec"):
            return
        self.store.kinds.register_crd(change.new)
        status = {**(change.new.get("status") or {}), **crd_established_status(change.new)}
        self.store.write_status(change.kind, None, name, status)


def crd_established_status(crd: dict[str, Any]) -> dict[str, Any]:
    """The status a real server gives a CRD whose names were accepted: Established, serving at once."""
    spec = crd.get("spec") or {}
    now = now_rfc3339()
    return {
        "acceptedNames": copy.deepcopy(spec.get("names") or {}),
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": now,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": now,
            },
        ],
        "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
    }
