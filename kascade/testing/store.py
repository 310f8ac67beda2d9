"""The stand-in's write path: what the API server's registry does on top of etcd (storage.py).

Every write goes through one pipeline, as on a real server: decode checks
(apiVersion/kind, namespace, name), the subresource split (writes to the main
resource keep the stored status; writes to `/status` keep everything else),
server-owned metadata (uid, resourceVersion from one global counter,
creationTimestamp, generation), admission (admission.py: pruning of unknown
fields, refused with `fieldValidation=Strict` and a warning otherwise;
defaulting; validation, 422 Invalid with field paths), the no-op check (an
update that changes nothing writes nothing: no new resourceVersion, no watch
event) and the commit, which feeds the watch history and the observers
(controllers, garbage collector). Deletion honours preconditions, finalizers
and the propagation policy; the garbage collector (garbage_collection.py)
finishes what a policy leaves pending.

All methods are synchronous and run on the server's event loop, so a write is
atomic with respect to every other request.
"""

from __future__ import annotations

import copy
import datetime
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from kascade.testing import errors
from kascade.testing.admission import admit, decode_object, place_in_namespace, spec_changed
from kascade.testing.builtin_defaults import Allocator
from kascade.testing.errors import Cause
from kascade.testing.kinds import Kind, KindRegistry
from kascade.testing.patches import apply_patch
from kascade.testing.storage import Storage
from kascade.testing.watches import ADDED, DELETED, MODIFIED

_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what the real server draws generated name suffixes from
_SERVER_META = (
    "uid",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class WriteResult:
    obj: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    created: bool = False


@dataclass
class DeleteResult:
    obj: dict[str, Any]
    deleted_now: bool


class Store(Storage):
    """The write verbs (create, update, patch, delete) over the storage, each through the server's checks."""

    def __init__(self, kinds: KindRegistry, *, history_limit: int = 10_000):
        super().__init__(kinds, history_limit=history_limit)
        self._allocator = Allocator()

    # --- creating ---------------------------------------------------------------------

    def create(
        self, kind: Kind, namespace: str | None, body: Any, *, dry_run: bool = False, field_validation: str = "Warn"
    ) -> WriteResult:
        obj = decode_object(kind, body)
        namespace = place_in_namespace(kind, namespace, obj)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        if not meta.get("name") and meta.get("generateName"):
            for _ in range(8):
                candidate = meta["generateName"] + "".join(random.choice(_GENERATE_ALPHABET) for _ in range(5))
                if self.get(kind, namespace, candidate) is None:
                    meta["name"] = candidate
                    break
        if kind.namespaced and meta.get("name"):
            self._namespace_accepts(namespace, kind, meta["name"])
        for key in (*_SERVER_META, "selfLink", "resourceVersion"):
            meta.pop(key, None)
        if kind.status_subresource and kind.plural != "nodes":
            obj.pop("status", None)  # create cannot set status where status is a subresource
            if not kind.custom:
                obj["status"] = {}  # a built-in type's status struct is always there, empty at first
        obj, warnings = admit(kind, None, obj, field_validation, self._allocator)
        name = obj["metadata"]["name"]
        if self.get(kind, namespace, name) is not None:
            raise errors.already_exists(kind.plural, kind.group, name)
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if kind.generation:
            meta["generation"] = 1
        if dry_run:
            meta["resourceVersion"] = str(self.resource_version)
            return WriteResult(obj, warnings, created=True)
        return WriteResult(self.commit(ADDED, kind, None, obj), warnings, created=True)

    def _namespace_accepts(self, namespace: str, kind: Kind, name: str) -> None:
        ns_kind = self.kinds.get("", "v1", "namespaces")
        assert ns_kind is not None
        ns = self.get(ns_kind, None, namespace)
        if ns is None:
            raise errors.not_found("namespaces", "", namespace)
        if (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise errors.forbidden(
                f'{kind.qualified} "{name}" is forbidden: unable to create new content in namespace '
                f"{namespace} because it is being terminated",
                kind.plural,
                kind.group,
                name,
            )

    # --- updating ---------------------------------------------------------------------

    def update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        require_precondition: bool | None = None,
        dry_run: bool = False,
        field_validation: str = "Warn",
    ) -> WriteResult:
        """PUT (and the second half of every patch): replace the object, keeping what the server owns."""
        old = self.require(kind, namespace, name)
        new = decode_object(kind, body)
        place_in_namespace(kind, namespace, new)
        meta = new["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        meta["name"] = name
        old_meta = old["metadata"]
        self._check_update_preconditions(
            kind, name, meta, old_meta, kind.custom if require_precondition is None else require_precondition
        )
        new = _keep_server_owned(kind, old, new, subresource)
        new["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        new, warnings = admit(kind, old, new, field_validation, self._allocator)
        if kind.generation and "generation" in old_meta and spec_changed(kind, old, new):
            new["metadata"]["generation"] = old_meta["generation"] + 1
        if new == old:
            return WriteResult(copy.deepcopy(old), warnings)  # a no-op: no new resourceVersion, no event
        if dry_run:
            return WriteResult(new, warnings)
        committed = self.commit(MODIFIED, kind, old, new)
        if (
            committed["metadata"].get("deletionTimestamp")
            and not committed["metadata"].get("finalizers")
            and kind.plural != "namespaces"
        ):
            self.commit(DELETED, kind, committed, committed)  # the last finalizer is gone: the object goes
        return WriteResult(committed, warnings)

    @staticmethod
    def _check_update_preconditions(
        kind: Kind, name: str, meta: dict[str, Any], old_meta: dict[str, Any], require_precondition: bool
    ) -> None:
        """Optimistic concurrency: a stale resourceVersion or another uid is 409; a custom resource must send one (422)."""
        if meta.get("resourceVersion"):
            if meta["resourceVersion"] != old_meta["resourceVersion"]:
                raise errors.conflict(kind.plural, kind.group, name)
        elif require_precondition:
            raise errors.invalid(
                kind.kind,
                kind.group,
                name,
                [
                    Cause(
                        "FieldValueInvalid",
                        "Invalid value: 0: must be specified for an update",
                        "metadata.resourceVersion",
                    )
                ],
            )
        if meta.get("uid") and meta["uid"] != old_meta.get("uid"):
            raise errors.conflict(
                kind.plural,
                kind.group,
                name,
                f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {old_meta.get('uid')}",
            )

    def patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        patch_type: str,
        body: Any,
        *,
        subresource: str | None = None,
        field_manager: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Warn",
    ) -> WriteResult:
        """PATCH with `json`, `merge`, `strategic` or `apply` semantics, then the update pipeline."""
        if patch_type == "strategic" and kind.custom:
            raise errors.unsupported_media_type(
                "application/strategic-merge-patch+json",
                ["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"],
            )
        if patch_type == "apply" and not field_manager:
            raise errors.bad_request("PATCH, application/apply-patch+yaml requires fieldManager to be set")
        old = self.get(kind, namespace, name)
        if old is None:
            if patch_type == "apply":
                if isinstance(body, dict):
                    body = {**body, "metadata": {**(body.get("metadata") or {}), "name": name}}
                return self.create(kind, namespace, body, dry_run=dry_run, field_validation=field_validation)
            raise errors.not_found(kind.plural, kind.group, name)
        patched = apply_patch(kind, old, patch_type, body)
        patched_rv = (patched.get("metadata") or {}).get("resourceVersion")
        if patched_rv and patched_rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(kind.plural, kind.group, name)
        patched.setdefault("metadata", {})["resourceVersion"] = old["metadata"]["resourceVersion"]
        return self.update(
            kind,
            namespace,
            name,
            patched,
            subresource=subresource,
            require_precondition=False,
            dry_run=dry_run,
            field_validation=field_validation,
        )

    def write_status(
        self, kind: Kind, namespace: str | None, name: str, status: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """A controller's status write: no precondition, no validation beyond the no-op check."""
        old = self.get(kind, namespace, name)
        if old is None:
            return None
        new = copy.deepcopy(old)
        if status is None:
            new.pop("status", None)
        else:
            new["status"] = status
        if new == old:
            return old
        return self.commit(MODIFIED, kind, old, new)

    # --- deleting -----------------------------------------------------------------------

    def delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> DeleteResult:
        obj = self.require(kind, namespace, name)
        meta = obj["metadata"]
        preconditions = preconditions or {}
        if preconditions.get("uid") and preconditions["uid"] != meta.get("uid"):
            raise errors.conflict(
                kind.plural,
                kind.group,
                name,
                f"Precondition failed: UID in precondition: {preconditions['uid']}, UID in object meta: {meta.get('uid')}",
            )
        if preconditions.get("resourceVersion") and preconditions["resourceVersion"] != meta.get("resourceVersion"):
            raise errors.conflict(
                kind.plural,
                kind.group,
                name,
                f"Precondition failed: ResourceVersion in precondition: {preconditions['resourceVersion']}, "
                f"ResourceVersion in object meta: {meta.get('resourceVersion')}",
            )
        if dry_run:
            return DeleteResult(copy.deepcopy(obj), deleted_now=not meta.get("finalizers"))
        finalizers = list(meta.get("finalizers") or [])
        if propagation == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        elif propagation == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        if kind.plural == "namespaces":
            return DeleteResult(self._mark_deleting(kind, obj, finalizers, phase="Terminating"), deleted_now=False)
        if finalizers:
            if meta.get("deletionTimestamp") and finalizers == (meta.get("finalizers") or []):
                return DeleteResult(copy.deepcopy(obj), deleted_now=False)
            return DeleteResult(self._mark_deleting(kind, obj, finalizers), deleted_now=False)
        return DeleteResult(self.commit(DELETED, kind, obj, obj), deleted_now=True)

    def _mark_deleting(
        self, kind: Kind, obj: dict[str, Any], finalizers: list[str], phase: str | None = None
    ) -> dict[str, Any]:
        new = copy.deepcopy(obj)
        meta = new["metadata"]
        if not meta.get("deletionTimestamp"):
            meta["deletionTimestamp"] = now_rfc3339()
            meta["deletionGracePeriodSeconds"] = 0
            if meta.get("generation"):
                meta["generation"] += 1
        if finalizers:
            meta["finalizers"] = finalizers
        if phase:
            new.setdefault("status", {})["phase"] = phase
        if new == obj:
            return copy.deepcopy(obj)
        return self.commit(MODIFIED, kind, obj, new)

    def remove_finalizer(self, kind: Kind, obj: dict[str, Any], finalizer: str) -> None:
        new = copy.deepcopy(obj)
        new["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers") or [] if f != finalizer]
        if not new["metadata"]["finalizers"]:
            del new["metadata"]["finalizers"]
        committed = self.commit(MODIFIED, kind, obj, new)
        if committed["metadata"].get("deletionTimestamp") and not committed["metadata"].get("finalizers"):
            self.commit(DELETED, kind, committed, committed)


def _keep_server_owned(kind: Kind, old: dict[str, Any], new: dict[str, Any], subresource: str | None) -> dict[str, Any]:
    """The subresource split: a `/status` write changes only status; a main write keeps server metadata (and status)."""
    if subresource == "status":
        status = new.get("status")
        new = copy.deepcopy(old)
        if status is None:
            new.pop("status", None)
        else:
            new["status"] = status
        return new
    meta, old_meta = new["metadata"], old["metadata"]
    for key in _SERVER_META:
        if key in old_meta:
            meta[key] = copy.deepcopy(old_meta[key])
        else:
            meta.pop(key, None)
    if kind.status_subresource:
        if "status" in old:
            new["status"] = copy.deepcopy(old["status"])
        else:
            new.pop("status", None)
    return new
