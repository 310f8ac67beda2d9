"""The stand-in's storage and write path: what etcd plus the API server's registry do.

Every write goes through one pipeline, as on a real server: decode checks
(apiVersion/kind, namespace, name), the subresource split (writes to the main
resource keep the stored status; writes to `/status` keep everything else),
server-owned metadata (uid, resourceVersion from one global counter,
creationTimestamp, generation), pruning of unknown fields (refused with
`fieldValidation=Strict`, a warning otherwise), defaulting, validation (422
Invalid with field paths), the no-op check (an update that changes nothing
writes nothing: no new resourceVersion, no watch event) and the commit, which
feeds the watch history and the observers (controllers, garbage collector).

All methods are synchronous and run on the server's event loop, so a write is
atomic with respect to every other request.
"""

from __future__ import annotations

import base64
import collections
import copy
import datetime
import json
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from kascade.testing import errors
from kascade.testing.builtins import (
    Allocator,
    canonicalize_quantities,
    default_builtin,
    validate_builtin,
    validate_metadata,
)
from kascade.testing.errors import ApiError, Cause
from kascade.testing.kinds import CRD_KIND, Kind, KindRegistry
from kascade.testing.schemas import (
    SchemaTree,
    apply_defaults,
    builtin_schema,
    cel_causes,
    crd_validator,
    json_merge_patch,
    list_type_causes,
    prune,
    schema_causes,
    strategic_merge_patch,
)
from kascade.testing.selectors import FieldSelector, LabelSelector

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what the real server draws generated name suffixes from
_SERVER_META = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields")


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Change:
    """One committed change: what observers and watchers get."""

    type: str
    kind: Kind
    old: dict[str, Any] | None
    new: dict[str, Any]
    resource_version: int


@dataclass(eq=False)
class Watcher:
    """One watch stream's subscription: its filter, and a queue of events to send."""

    kind: Kind
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    queue: collections.deque[dict[str, Any] | None] = field(default_factory=collections.deque)
    wakeup: Callable[[], None] = lambda: None

    def matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(obj)

    def offer(self, change: Change) -> None:
        """Filtered watch semantics: an object that starts matching is ADDED, one that stops is DELETED."""
        was, now = self.matches(change.old), self.matches(change.new)
        if change.type == DELETED:
            event_type = DELETED if (now or was) else None
        elif change.type == ADDED:
            event_type = ADDED if now else None
        else:
            event_type = MODIFIED if was and now else ADDED if now else DELETED if was else None
        if event_type:
            self.queue.append({"type": event_type, "object": change.new})
            self.wakeup()

    def close(self) -> None:
        self.queue.append(None)
        self.wakeup()


@dataclass
class WriteResult:
    obj: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    created: bool = False


@dataclass
class DeleteResult:
    obj: dict[str, Any]
    deleted_now: bool


class Store:
    """Objects by kind, namespace and name; one resourceVersion counter; watch history."""

    def __init__(self, kinds: KindRegistry, *, history_limit: int = 10_000):
        self.kinds = kinds
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = collections.defaultdict(dict)
        self._rv = 0
        self._history: collections.deque[Change] = collections.deque()
        self._history_limit = history_limit
        self._history_floor = 0  # watches from a resourceVersion below this get 410 Expired
        self._watchers: dict[tuple[str, str], set[Watcher]] = collections.defaultdict(set)
        self._allocator = Allocator()
        self.observers: list[Callable[[Change], None]] = []

    # --- reading ------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._objects[kind.storage].get((namespace or "", name))

    def require(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.get(kind, namespace, name)
        if obj is None:
            raise errors.not_found(kind.plural, kind.group, name)
        return obj

    def list_objects(self, kind: Kind, namespace: str | None, labels: LabelSelector | None = None,
             fields: FieldSelector | None = None) -> list[dict[str, Any]]:
        labels, fields = labels or LabelSelector(), fields or FieldSelector()
        items = []
        for (ns, _), obj in sorted(self._objects[kind.storage].items()):
            if namespace is not None and ns != namespace:
                continue
            meta = obj.get("metadata") or {}
            if labels.matches(meta.get("labels")) and fields.matches(obj):
                items.append(obj)
        return items

    def all_objects(self) -> Iterable[tuple[Kind, dict[str, Any]]]:
        for storage, objects in list(self._objects.items()):
            kinds = self.kinds.for_storage(storage)
            if kinds:
                for obj in list(objects.values()):
                    yield kinds[0], obj

    def by_uid(self) -> dict[str, tuple[Kind, dict[str, Any]]]:
        return {(obj["metadata"].get("uid")): (kind, obj) for kind, obj in self.all_objects()}

    # --- watching -----------------------------------------------------------------

    def watch(self, watcher: Watcher, resource_version: str | None, *, initial_events: bool = False) -> None:
        """Subscribe, and queue what happened after `resource_version` (or the current state, if none)."""
        if resource_version in (None, "", "0") or initial_events:
            for obj in self.list_objects(watcher.kind, watcher.namespace, watcher.labels, watcher.fields):
                watcher.queue.append({"type": ADDED, "object": obj})
        else:
            try:
                since = int(resource_version)
            except ValueError:
                raise errors.bad_request(f"invalid resource version: {resource_version!r}") from None
            if since < self._history_floor:
                raise errors.expired(f"too old resource version: {since} ({self._history_floor + 1})")
            for change in self._history:
                if change.resource_version > since and change.kind.storage == watcher.kind.storage:
                    watcher.offer(change)
        self._watchers[watcher.kind.storage].add(watcher)

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers[watcher.kind.storage].discard(watcher)

    def close_watchers(self, storage: tuple[str, str] | None = None) -> None:
        for key, watchers in list(self._watchers.items()):
            if storage is None or key == storage:
                for watcher in list(watchers):
                    watcher.close()
                watchers.clear()

    def changes_since(self, resource_version: int) -> list[Change]:
        """The committed changes after `resource_version` that the watch history still holds."""
        return [change for change in self._history if change.resource_version > resource_version]

    def compact(self) -> None:
        """Forget the watch history, as etcd compaction does: older resourceVersions now get 410 Gone."""
        self._history.clear()
        self._history_floor = self._rv

    # --- committing ---------------------------------------------------------------

    def _commit(self, change_type: str, kind: Kind, old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
        self._rv += 1
        new = copy.deepcopy(new)
        new["metadata"]["resourceVersion"] = str(self._rv)
        key = (new["metadata"].get("namespace") or "", new["metadata"]["name"])
        if change_type == DELETED:
            self._objects[kind.storage].pop(key, None)
        else:
            self._objects[kind.storage][key] = new
        change = Change(change_type, kind, old, new, self._rv)
        self._history.append(change)
        while len(self._history) > self._history_limit:
            self._history_floor = self._history.popleft().resource_version
        for watcher in list(self._watchers[kind.storage]):
            watcher.offer(change)
        for observer in list(self.observers):
            observer(change)
        return new

    # --- the write pipeline ---------------------------------------------------------

    def _tree(self, kind: Kind) -> tuple[SchemaTree, Any] | None:
        if kind.custom:
            assert kind.schema is not None
            return SchemaTree(kind.schema, structural=True), crd_validator(kind.schema)
        return builtin_schema(kind.kind, kind.group, kind.version)

    def _admit(self, kind: Kind, old: dict[str, Any] | None, obj: dict[str, Any], field_validation: str) -> tuple[dict[str, Any], list[str]]:
        """Prune, default and validate `obj` as the server would; returns it and the warnings."""
        warnings: list[str] = []
        schema = self._tree(kind)
        name = (obj.get("metadata") or {}).get("name") or ""
        if schema is not None:
            tree, validator = schema
            unknown: list[str] = []
            obj = prune(tree, obj, unknown)
            if unknown and field_validation == "Strict":
                listed = ", ".join(f'unknown field "{path}"' for path in unknown)
                raise errors.bad_request(f"{kind.kind} in version \"{kind.version}\" cannot be handled as a {kind.kind}: strict decoding error: {listed}")
            if field_validation != "Ignore":
                warnings += [f'unknown field "{path}"' for path in unknown]
            if kind.custom:
                obj = apply_defaults(tree, obj)
            else:
                obj = canonicalize_quantities(tree, obj)
        if not kind.custom:
            default_builtin(kind, obj, old, self._allocator)
        causes: list[Cause] = validate_metadata(kind, obj, old)
        if schema is not None:
            tree, validator = schema
            # ObjectMeta is checked by validate_metadata, with the real server's wording.
            # Built-in status is written by kubelets and controllers, whose required fields the server does not check.
            found = [cause for cause in schema_causes(validator, obj)
                     if not cause.field.startswith("metadata")
                     and not (not kind.custom and cause.field.startswith("status") and cause.reason == "FieldValueRequired")]
            if not kind.custom:
                type_errors = [cause for cause in found if cause.reason == "FieldValueTypeInvalid"]
                if type_errors:  # a built-in type does not even decode
                    first = type_errors[0]
                    raise errors.bad_request(f"{kind.kind} in version \"{kind.version}\" cannot be handled as a {kind.kind}: "
                                             f"json: cannot unmarshal into Go value at {first.field}: {first.message}")
            causes += found
            causes += list_type_causes(tree, obj)
            if kind.custom and not found:
                causes += cel_causes(tree, obj, old)
        if not kind.custom:
            causes += validate_builtin(kind, obj, old)
        if causes:
            unique = list({(cause.field, cause.reason, cause.message): cause for cause in causes}.values())
            raise errors.invalid(kind.kind, kind.group, name, unique)
        return obj, warnings

    def _check_type(self, kind: Kind, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request(f"the body of the request is not a JSON object: {json.dumps(body)[:100]}")
        api_version, kind_name = body.get("apiVersion"), body.get("kind")
        if (api_version and api_version != kind.api_version) or (kind_name and kind_name != kind.kind):
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version ({kind.api_version})"
                if api_version != kind.api_version
                else f"the kind in the data ({kind_name}) does not match the expected kind ({kind.kind})"
            )
        body = copy.deepcopy(body)
        body["apiVersion"], body["kind"] = kind.api_version, kind.kind
        if body.get("metadata") is None:
            body["metadata"] = {}
        if not isinstance(body["metadata"], dict):
            raise errors.bad_request(f"{kind.kind} in version \"{kind.version}\" cannot be handled as a {kind.kind}: metadata must be an object")
        return body

    def _check_namespace(self, kind: Kind, namespace: str | None, body: dict[str, Any]) -> str:
        meta = body["metadata"]
        if not kind.namespaced:
            meta.pop("namespace", None)
            return ""
        if meta.get("namespace") and namespace and meta["namespace"] != namespace:
            raise errors.bad_request("the namespace of the provided object does not match the namespace sent on the request")
        namespace = namespace or meta.get("namespace")
        if not namespace:
            raise errors.bad_request("the namespace of the object is missing")
        meta["namespace"] = namespace
        return namespace

    def _namespace_accepts(self, namespace: str, kind: Kind, name: str) -> None:
        ns_kind = self.kinds.get("", "v1", "namespaces")
        assert ns_kind is not None
        ns = self.get(ns_kind, None, namespace)
        if ns is None:
            raise errors.not_found("namespaces", "", namespace)
        if (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise errors.forbidden(f'{kind.qualified} "{name}" is forbidden: unable to create new content in namespace '
                                   f"{namespace} because it is being terminated", kind.plural, kind.group, name)

    def create(self, kind: Kind, namespace: str | None, body: Any, *, dry_run: bool = False,
               field_validation: str = "Warn") -> WriteResult:
        obj = self._check_type(kind, body)
        namespace = self._check_namespace(kind, namespace, obj)
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
        obj, warnings = self._admit(kind, None, obj, field_validation)
        name = obj["metadata"]["name"]
        if self.get(kind, namespace, name) is not None:
            raise errors.already_exists(kind.plural, kind.group, name)
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if kind.generation:
            meta["generation"] = 1
        if dry_run:
            meta["resourceVersion"] = str(self._rv)
            return WriteResult(obj, warnings, created=True)
        return WriteResult(self._commit(ADDED, kind, None, obj), warnings, created=True)

    def _spec_changed(self, kind: Kind, old: dict[str, Any], new: dict[str, Any]) -> bool:
        if kind.custom:
            ignored = {"metadata", "status"} if kind.status_subresource else {"metadata"}
            strip = lambda obj: {key: value for key, value in obj.items() if key not in ignored}
            return strip(old) != strip(new)
        changed = old.get("spec") != new.get("spec")
        if kind.plural == "deployments":  # annotations are copied to ReplicaSets, so they bump it too
            changed = changed or (old["metadata"].get("annotations") != new["metadata"].get("annotations"))
        return changed

    def update(self, kind: Kind, namespace: str | None, name: str, body: Any, *, subresource: str | None = None,
               require_precondition: bool | None = None, dry_run: bool = False,
               field_validation: str = "Warn") -> WriteResult:
        """PUT (and the second half of every patch): replace the object, keeping what the server owns."""
        old = self.require(kind, namespace, name)
        new = self._check_type(kind, body)
        self._check_namespace(kind, namespace, new)
        meta = new["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        meta["name"] = name
        old_meta = old["metadata"]
        if require_precondition is None:
            require_precondition = kind.custom
        if meta.get("resourceVersion"):
            if meta["resourceVersion"] != old_meta["resourceVersion"]:
                raise errors.conflict(kind.plural, kind.group, name)
        elif require_precondition:
            raise errors.invalid(kind.kind, kind.group, name, [
                Cause("FieldValueInvalid", 'Invalid value: 0: must be specified for an update', "metadata.resourceVersion")])
        if meta.get("uid") and meta["uid"] != old_meta.get("uid"):
            raise errors.conflict(kind.plural, kind.group, name,
                                  f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {old_meta.get('uid')}")
        if subresource == "status":
            status = new.get("status")
            new = copy.deepcopy(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        else:
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
        new["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        new, warnings = self._admit(kind, old, new, field_validation)
        if kind.generation and "generation" in old_meta and self._spec_changed(kind, old, new):
            new["metadata"]["generation"] = old_meta["generation"] + 1
        if new == old:
            return WriteResult(copy.deepcopy(old), warnings)  # a no-op: no new resourceVersion, no event
        if dry_run:
            return WriteResult(new, warnings)
        committed = self._commit(MODIFIED, kind, old, new)
        if committed["metadata"].get("deletionTimestamp") and not committed["metadata"].get("finalizers") and kind.plural != "namespaces":
            self._commit(DELETED, kind, committed, committed)  # the last finalizer is gone: the object goes
        return WriteResult(committed, warnings)

    def patch(self, kind: Kind, namespace: str | None, name: str, patch_type: str, body: Any, *,
              subresource: str | None = None, field_manager: str | None = None, dry_run: bool = False,
              field_validation: str = "Warn") -> WriteResult:
        """PATCH with `json`, `merge`, `strategic` or `apply` semantics, then the update pipeline."""
        if patch_type == "strategic" and kind.custom:
            raise errors.unsupported_media_type("application/strategic-merge-patch+json", [
                "application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"])
        if patch_type == "apply" and not field_manager:
            raise errors.bad_request("PATCH, application/apply-patch+yaml requires fieldManager to be set")
        old = self.get(kind, namespace, name)
        if old is None:
            if patch_type == "apply":
                if isinstance(body, dict):
                    body = {**body, "metadata": {**(body.get("metadata") or {}), "name": name}}
                return self.create(kind, namespace, body, dry_run=dry_run, field_validation=field_validation)
            raise errors.not_found(kind.plural, kind.group, name)
        if patch_type == "json":
            if not isinstance(body, list):
                raise errors.bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            try:
                patched = jsonpatch.apply_patch(copy.deepcopy(old), body)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {error}") from None
        elif patch_type == "merge":
            if not isinstance(body, dict):
                raise errors.bad_request("a merge patch must be a JSON object")
            patched = json_merge_patch(old, body)
        elif patch_type in ("strategic", "apply"):
            if not isinstance(body, dict):
                raise errors.bad_request("a strategic merge patch must be a JSON object")
            schema = self._tree(kind)
            tree = schema[0] if schema else SchemaTree({}, structural=False)
            patched = strategic_merge_patch(tree, old, body, apply=patch_type == "apply")
        else:  # pragma: no cover
            raise errors.unsupported_media_type(patch_type, [])
        if not isinstance(patched, dict):
            raise errors.bad_request("the patch did not produce an object")
        patched_rv = (patched.get("metadata") or {}).get("resourceVersion")
        if patched_rv and patched_rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(kind.plural, kind.group, name)
        patched.setdefault("metadata", {})["resourceVersion"] = old["metadata"]["resourceVersion"]
        return self.update(kind, namespace, name, patched, subresource=subresource, require_precondition=False,
                           dry_run=dry_run, field_validation=field_validation)

    # --- deleting -----------------------------------------------------------------------

    def delete(self, kind: Kind, namespace: str | None, name: str, *, propagation: str | None = None,
               preconditions: dict[str, Any] | None = None, dry_run: bool = False) -> DeleteResult:
        obj = self.require(kind, namespace, name)
        meta = obj["metadata"]
        preconditions = preconditions or {}
        if preconditions.get("uid") and preconditions["uid"] != meta.get("uid"):
            raise errors.conflict(kind.plural, kind.group, name,
                                  f"Precondition failed: UID in precondition: {preconditions['uid']}, UID in object meta: {meta.get('uid')}")
        if preconditions.get("resourceVersion") and preconditions["resourceVersion"] != meta.get("resourceVersion"):
            raise errors.conflict(kind.plural, kind.group, name,
                                  f"Precondition failed: ResourceVersion in precondition: {preconditions['resourceVersion']}, "
                                  f"ResourceVersion in object meta: {meta.get('resourceVersion')}")
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
        return DeleteResult(self._commit(DELETED, kind, obj, obj), deleted_now=True)

    def _mark_deleting(self, kind: Kind, obj: dict[str, Any], finalizers: list[str], phase: str | None = None) -> dict[str, Any]:
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
        return self._commit(MODIFIED, kind, obj, new)

    def remove_finalizer(self, kind: Kind, obj: dict[str, Any], finalizer: str) -> None:
        new = copy.deepcopy(obj)
        new["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers") or [] if f != finalizer]
        if not new["metadata"]["finalizers"]:
            del new["metadata"]["finalizers"]
        committed = self._commit(MODIFIED, kind, obj, new)
        if committed["metadata"].get("deletionTimestamp") and not committed["metadata"].get("finalizers"):
            self._commit(DELETED, kind, committed, committed)

    def write_status(self, kind: Kind, namespace: str | None, name: str, status: dict[str, Any] | None) -> dict[str, Any] | None:
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
        return self._commit(MODIFIED, kind, old, new)

    def remove_storage(self, kind: Kind) -> None:
        """A CRD went away: its objects go too (DELETED events), and watches on it end."""
        for obj in list(self._objects.get(kind.storage, {}).values()):
            self._commit(DELETED, kind, obj, obj)
        self._objects.pop(kind.storage, None)
        self.close_watchers(kind.storage)

    # --- garbage collection ------------------------------------------------------------------

    def collect_garbage(self) -> int:
        """One pass of the garbage collector and the namespace controller; returns how many writes it made.

        - a dependent whose owners (by uid) are all gone is deleted (background);
        - an owner deleted with `propagationPolicy=Foreground` waits (finalizer
          `foregroundDeletion`) until its dependents are gone;
        - `propagationPolicy=Orphan` (finalizer `orphan`) strips the owner
          references from the dependents, then lets the owner go;
        - a terminating namespace has its contents deleted, then goes itself.
        """
        writes = 0
        live = self.by_uid()
        dependents: dict[str, list[tuple[Kind, dict[str, Any]]]] = collections.defaultdict(list)
        for kind, obj in self.all_objects():
            for ref in obj["metadata"].get("ownerReferences") or []:
                dependents[ref.get("uid")].append((kind, obj))
        for uid, (kind, obj) in live.items():
            meta = obj["metadata"]
            if not meta.get("deletionTimestamp"):
                continue
            finalizers = meta.get("finalizers") or []
            if "orphan" in finalizers:
                for dep_kind, dep in dependents.get(uid, []):
                    current = self.get(dep_kind, dep["metadata"].get("namespace"), dep["metadata"]["name"])
                    if current is not None:
                        new = copy.deepcopy(current)
                        new["metadata"]["ownerReferences"] = [r for r in current["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
                        if not new["metadata"]["ownerReferences"]:
                            del new["metadata"]["ownerReferences"]
                        self._commit(MODIFIED, dep_kind, current, new)
                        writes += 1
                self.remove_finalizer(kind, obj, "orphan")
                writes += 1
            elif "foregroundDeletion" in finalizers:
                remaining = [(k, d) for k, d in dependents.get(uid, []) if self.get(k, d["metadata"].get("namespace"), d["metadata"]["name"])]
                for dep_kind, dep in remaining:
                    if not dep["metadata"].get("deletionTimestamp"):
                        self.delete(dep_kind, dep["metadata"].get("namespace"), dep["metadata"]["name"], propagation="Foreground")
                        writes += 1
                if not remaining:
                    self.remove_finalizer(kind, obj, "foregroundDeletion")
                    writes += 1
        live = self.by_uid()
        for kind, obj in list(self.all_objects()):
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or []
            if not refs or meta.get("deletionTimestamp"):
                continue
            orphaned = all(not self._owner_present(ref, obj, live) for ref in refs)
            if orphaned and self.get(kind, meta.get("namespace"), meta["name"]) is not None:
                self.delete(kind, meta.get("namespace"), meta["name"], propagation="Background")
                writes += 1
        ns_kind = self.kinds.get("", "v1", "namespaces")
        assert ns_kind is not None
        for ns in self.list_objects(ns_kind, None):
            if not ns["metadata"].get("deletionTimestamp"):
                continue
            name = ns["metadata"]["name"]
            contents = [(kind, obj) for kind, obj in self.all_objects() if kind.namespaced and obj["metadata"].get("namespace") == name]
            for kind, obj in contents:
                if not obj["metadata"].get("deletionTimestamp"):
                    self.delete(kind, name, obj["metadata"]["name"], propagation="Background")
                    writes += 1
            if not contents and self.get(ns_kind, None, name) is not None:
                self._commit(DELETED, ns_kind, ns, ns)
                writes += 1
        return writes

    @staticmethod
    def _owner_present(ref: dict[str, Any], dependent: dict[str, Any], live: dict[str, tuple[Kind, dict[str, Any]]]) -> bool:
        found = live.get(str(ref.get("uid")))
        if found is None:
            return False
        owner_kind, owner = found
        if owner.get("kind", owner_kind.kind) != ref.get("kind") or owner["metadata"]["name"] != ref.get("name"):
            return False
        # A namespaced owner is looked up in the dependent's namespace only.
        return not owner_kind.namespaced or owner["metadata"].get("namespace") == dependent["metadata"].get("namespace")


def continue_token(namespace: str, name: str, resource_version: int) -> str:
    raw = json.dumps({"start": [namespace, name], "rv": resource_version}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def parse_continue_token(token: str) -> tuple[tuple[str, str], int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return (data["start"][0], data["start"][1]), int(data["rv"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise errors.bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)") from None


def crd_established_status(crd: dict[str, Any]) -> dict[str, Any]:
    spec = crd.get("spec") or {}
    now = now_rfc3339()
    return {
        "acceptedNames": copy.deepcopy(spec.get("names") or {}),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
    }


__all__ = ["ADDED", "CRD_KIND", "DELETED", "MODIFIED", "Change", "Store", "Watcher", "WriteResult"]
