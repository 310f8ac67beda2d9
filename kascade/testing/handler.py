"""The HTTP face of the stand-in: a `kmock.KubernetesScaffold` that serves Kubernetes' REST API.

kmock provides the request parsing, the request log and the Status-shaped
error rendering; this subclass replaces kmock's permissive emulator with the
strict store (store.py), routes every URL the way the real server does, and
records each request (method, path, query, body, user agent, the verb and
resource an RBAC rule would name, and the answer's status code).

Fault injection stays available through kmock's DSL: a reaction added to the
handler (`server.handler['patch', kmock.resource('apps', 'v1', 'deployments')] << 500`)
answers matching requests before the API does.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import (
    apps as kmock_apps,  # RawHandler._handle: the DSL reactions only
)

from kascade.testing import discovery, errors, tables
from kascade.testing.errors import ApiError
from kascade.testing.kinds import Kind
from kascade.testing.schemas import json_merge_patch
from kascade.testing.selectors import parse_field_selector, parse_label_selector
from kascade.testing.store import Store, Watcher, continue_token, parse_continue_token

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
_PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+cbor": "apply",
}
DEFAULT_WATCH_TIMEOUT_S = 1800.0


@dataclass
class RecordedRequest:
    """One request as the server saw it, and what it answered."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    content_type: str
    user_agent: str
    verb: str | None = None  # get, list, watch, create, update, patch, delete, deletecollection (as in RBAC rules)
    group: str | None = None
    version: str | None = None
    resource: str | None = None  # the plural, as in RBAC rules
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None
    status: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS

    @property
    def rbac(self) -> tuple[str, str, str] | None:
        """(apiGroup, resource[/subresource], verb) as a Role rule must allow it; None for discovery requests."""
        if self.verb is None or self.resource is None or self.group is None:
            return None
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return (self.group, resource, self.verb)

    def __str__(self) -> str:
        where = "/".join(part for part in (self.namespace, self.resource, self.name, self.subresource) if part)
        return f"{self.method} {self.path} [{self.verb or '-'} {where}] -> {self.status}"


def _get_path(obj: Any, path: str) -> Any:
    for part in [p for p in path.split(".") if p]:
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = [p for p in path.split(".") if p]
    for part in parts[:-1]:
        obj = obj.setdefault(part, {})
    obj[parts[-1]] = value


def scale_of(kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
    assert kind.scale is not None
    spec_path, status_path, selector_path = kind.scale
    meta = obj["metadata"]
    selector: Any = _get_path(obj, selector_path) if selector_path else None
    if isinstance(selector, dict):  # a LabelSelector object, shown as its string form
        match_labels = selector.get("matchLabels") or {}
        selector = ",".join(f"{key}={value}" for key, value in sorted(match_labels.items()))
    status: dict[str, Any] = {"replicas": _get_path(obj, status_path) or 0}
    if selector:
        status["selector"] = selector
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {key: meta[key] for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if key in meta},
        "spec": {"replicas": _get_path(obj, spec_path) or 0},
        "status": status,
    }


@dataclass
class Route:
    kind: Kind
    namespace: str | None
    name: str | None
    subresource: str | None


def _json_response(body: Any, status: int = 200, warnings: list[str] | None = None) -> aiohttp.web.Response:
    response = aiohttp.web.Response(text=json.dumps(body), status=status, content_type="application/json")
    for warning in warnings or []:
        escaped = warning.replace("\\", "\\\\").replace('"', '\\"')
        response.headers.add("Warning", f'299 - "{escaped}"')
    return response


def _error_response(error: ApiError) -> aiohttp.web.Response:
    return _json_response(error.status(), error.code, error.warnings)


def _bool_param(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


@attrs.define(kw_only=True)
class StandinHandler(kmock.KubernetesScaffold):
    """Answers the Kubernetes API from a strict in-memory store."""

    store: Store = attrs.field()
    recorded: list[RecordedRequest] = attrs.field(factory=list)
    _shutting_down: asyncio.Event = attrs.field(factory=asyncio.Event)

    def __attrs_post_init__(self) -> None:
        # kmock's scaffold would register its own (permissive) discovery reactions here;
        # every request goes to `_serve` instead, so none are registered.
        pass

    def shutdown(self) -> None:
        self._shutting_down.set()
        self.store.close_watchers()

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's URL parser fails on some valid paths (`/api/v1/namespaces`); such a request
        # is still logged and served, just without kmock's Kubernetes-specific parsing.
        body = await raw_request.read()
        try:
            request = await kmock.Request._parse(raw_request, id=len(self._requests))
        except (ValueError, TypeError):
            request = kmock.Request(id=len(self._requests), raw_request=raw_request, url=raw_request.url,
                                    method=raw_request.method, params=dict(raw_request.query),
                                    headers=dict(raw_request.headers), body=body)
        self._requests.append(request)
        return await self._handle(request)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        record = self._record(request)
        if self._payloads:  # reactions a test added (fault injection) come first
            try:
                response = await kmock_apps.RawHandler._handle(self, request)
            except NotImplementedError:
                pass
            else:
                record.status = response.status
                return response
        return await self._serve(request, record)

    # --- the request log ----------------------------------------------------------------

    def _record(self, request: kmock.Request) -> RecordedRequest:
        raw = request._raw_request
        assert raw is not None
        content_type = raw.headers.get("Content-Type", "")
        body: Any = None
        if request.body:
            try:
                body = self._parse_body(request.body, content_type)
            except ApiError:
                body = request.body.decode(errors="replace")
        record = RecordedRequest(
            method=raw.method,
            path=raw.path,
            query=dict(raw.query),
            body=body,
            content_type=content_type.split(";")[0].strip(),
            user_agent=raw.headers.get("User-Agent", ""),
        )
        self.recorded.append(record)
        return record

    @staticmethod
    def _parse_body(body: bytes, content_type: str) -> Any:
        media = content_type.split(";")[0].strip().lower()
        if "protobuf" in media or "cbor" in media:
            raise errors.unsupported_media_type(media, ["application/json", "application/yaml"])
        try:
            if "yaml" in media:
                return yaml.safe_load(body.decode())
            return json.loads(body.decode()) if body else None
        except (ValueError, yaml.YAMLError) as error:
            raise errors.bad_request(f"couldn't decode the body: {error}") from None

    # --- routing ---------------------------------------------------------------------------

    async def _serve(self, request: kmock.Request, record: RecordedRequest) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        assert raw is not None
        try:
            response = await self._dispatch(raw, request.body, record)
        except ApiError as error:
            response = _error_response(error)
        except Exception as error:  # noqa: BLE001 - a bug in the stand-in: answer 500 with the cause, like kmock
            response = _error_response(ApiError(500, "InternalError", f"{type(error).__name__}: {error}"))
            if self._errors:
                self._errors[-1].append(error)
        record.status = response.status
        return response

    async def _dispatch(self, raw: aiohttp.web.BaseRequest, body: bytes, record: RecordedRequest) -> aiohttp.web.StreamResponse:
        path = raw.path.rstrip("/") or "/"
        method = raw.method.upper()
        kinds = self.store.kinds
        if path in ("/healthz", "/livez", "/readyz"):
            return aiohttp.web.Response(text="ok")
        if method != "GET" and not path.startswith(("/api/", "/apis/")):
            raise errors.method_not_allowed()
        if path == "/":
            return _json_response(discovery.root_paths(kinds))
        if path == "/version":
            return _json_response(discovery.SERVER_VERSION)
        if path == "/api":
            return _json_response(discovery.api_versions())
        if path == "/apis":
            return _json_response(discovery.api_group_list(kinds))
        if path == "/openapi/v3":
            return _json_response(discovery.openapi_v3_root(kinds))
        if path.startswith("/openapi/v3/"):
            document = discovery.openapi_v3_group_version(kinds, path[len("/openapi/v3/"):])
            if document is None:
                raise errors.resource_not_found()
            return _json_response(document)
        segments = [segment for segment in path.split("/") if segment]
        if segments[0] == "api" and len(segments) >= 2:
            group, version, rest = "", segments[1], segments[2:]
        elif segments[0] == "apis" and len(segments) >= 2:
            if len(segments) == 2:
                group_doc = discovery.api_group(kinds, segments[1])
                if group_doc is None or method != "GET":
                    raise errors.resource_not_found()
                return _json_response(group_doc)
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            raise errors.resource_not_found()
        if not rest:
            resource_list = discovery.api_resource_list(kinds, group, version)
            if resource_list is None or method != "GET":
                raise errors.resource_not_found()
            return _json_response(resource_list)
        route = self._route(group, version, rest)
        record.group, record.version, record.resource = group, version, route.kind.plural
        record.namespace, record.name, record.subresource = route.namespace, route.name, route.subresource
        return await self._serve_resource(raw, method, route, body, record)

    def _route(self, group: str, version: str, rest: list[str]) -> Route:
        kinds = self.store.kinds
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and (k := kinds.get(group, version, rest[2])) is not None and k.namespaced:
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise errors.resource_not_found()
        plural, name, subresource = (rest + [None, None])[:3]
        assert plural is not None
        kind = kinds.get(group, version, plural)
        if kind is None:
            raise errors.resource_not_found()
        if kind.namespaced and namespace is None and name is not None:
            raise errors.resource_not_found()
        if subresource is not None and subresource not in kind.subresources:
            raise errors.resource_not_found()
        return Route(kind, namespace, name, subresource)

    async def _serve_resource(self, raw: aiohttp.web.BaseRequest, method: str, route: Route, body: bytes,
                              record: RecordedRequest) -> aiohttp.web.StreamResponse:
        query = raw.query
        kind = route.kind
        accept = raw.headers.get("Accept", "")
        as_table = "as=Table" in accept
        field_validation = query.get("fieldValidation", "Warn") or "Warn"
        if field_validation not in ("Ignore", "Warn", "Strict"):
            raise errors.bad_request(f'fieldValidation parameter unsupported: "{field_validation}"; valid values: Ignore, Warn, Strict')
        dry_run_values = query.getall("dryRun", [])
        if any(value != "All" for value in dry_run_values):
            raise errors.bad_request(f"unsupported dryRun value(s): {dry_run_values}; the only supported value is All")
        dry_run = bool(dry_run_values)
        store = self.store

        if route.subresource == "scale" and route.name is not None:
            return self._scale(raw, method, route, body, record, dry_run=dry_run)
        if method == "GET" and _bool_param(query.get("watch")):
            record.verb = "watch"
            return await self._watch(raw, route, as_table, record)
        if method == "GET" and route.name is None:
            record.verb = "list"
            return self._list(raw, route, as_table, accept)
        if method == "GET":
            record.verb = "get"
            assert route.name is not None
            obj = store.require(kind, route.namespace, route.name)
            return _json_response(self._render_one(kind, obj, as_table, accept, query.get("includeObject", "Metadata")))
        if method == "POST" and route.name is None:
            record.verb = "create"
            if kind.namespaced and route.namespace is None:
                raise errors.method_not_allowed()  # the cluster-wide path of a namespaced kind serves list and watch only
            result = store.create(kind, route.namespace, self._parse_body(body, raw.headers.get("Content-Type", "")),
                                  dry_run=dry_run, field_validation=field_validation)
            record.warnings = result.warnings
            return _json_response(self._render(kind, result.obj), 201, result.warnings)
        if method == "PUT" and route.name is not None:
            record.verb = "update"
            result = store.update(kind, route.namespace, route.name, self._parse_body(body, raw.headers.get("Content-Type", "")),
                                  subresource=route.subresource, dry_run=dry_run, field_validation=field_validation)
            record.warnings = result.warnings
            return _json_response(self._render(kind, result.obj), 200, result.warnings)
        if method == "PATCH" and route.name is not None:
            record.verb = "patch"
            media = raw.headers.get("Content-Type", "").split(";")[0].strip().lower()
            patch_type = _PATCH_TYPES.get(media)
            if patch_type is None:
                raise errors.unsupported_media_type(media, list(_PATCH_TYPES)[:4])
            result = store.patch(kind, route.namespace, route.name, patch_type, self._parse_body(body, media),
                                 subresource=route.subresource, field_manager=query.get("fieldManager"),
                                 dry_run=dry_run, field_validation=field_validation)
            record.warnings = result.warnings
            return _json_response(self._render(kind, result.obj), 201 if result.created else 200, result.warnings)
        if method == "DELETE" and route.name is not None and route.subresource is None:
            record.verb = "delete"
            options = self._delete_options(raw, body)
            outcome = store.delete(kind, route.namespace, route.name, propagation=options.get("propagationPolicy"),
                                   preconditions=options.get("preconditions"), dry_run=dry_run)
            if outcome.deleted_now and not kind.custom:
                return _json_response({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": route.name, "group": kind.group, "kind": kind.plural, "uid": outcome.obj["metadata"].get("uid")},
                })
            return _json_response(self._render(kind, outcome.obj))
        if method == "DELETE" and route.name is None:
            record.verb = "deletecollection"
            if kind.plural == "namespaces" or (kind.namespaced and route.namespace is None):
                raise errors.method_not_allowed()
            options = self._delete_options(raw, body)
            labels = parse_label_selector(query.get("labelSelector"))
            fields = parse_field_selector(query.get("fieldSelector"), kind.field_selectors)
            deleted = []
            for obj in store.list_objects(kind, route.namespace, labels, fields):
                meta = obj["metadata"]
                deleted.append(store.delete(kind, meta.get("namespace"), meta["name"],
                                            propagation=options.get("propagationPolicy"), dry_run=dry_run).obj)
            return _json_response({"kind": kind.list_kind, "apiVersion": kind.api_version,
                                   "metadata": {"resourceVersion": str(store.resource_version)},
                                   "items": [self._render(kind, obj) for obj in deleted]})
        raise errors.method_not_allowed()

    # --- the scale subresource -------------------------------------------------------------

    def _scale(self, raw: aiohttp.web.BaseRequest, method: str, route: Route, body: bytes, record: RecordedRequest, *,
               dry_run: bool) -> aiohttp.web.Response:
        """autoscaling/v1 Scale over the kind's replicas (what `kubectl scale` and HPAs use)."""
        kind, store = route.kind, self.store
        assert kind.scale is not None and route.name is not None
        obj = store.require(kind, route.namespace, route.name)
        scale = scale_of(kind, obj)
        if method == "GET":
            record.verb = "get"
            return _json_response(scale)
        if method == "PUT":
            record.verb = "update"
            wanted = self._parse_body(body, raw.headers.get("Content-Type", ""))
        elif method == "PATCH":
            record.verb = "patch"
            media = raw.headers.get("Content-Type", "").split(";")[0].strip().lower()
            patch_type = _PATCH_TYPES.get(media)
            patch = self._parse_body(body, media)
            if patch_type == "json" and isinstance(patch, list):
                try:
                    wanted = jsonpatch.apply_patch(scale, patch)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                    raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {error}") from None
            elif patch_type in ("merge", "strategic", "apply") and isinstance(patch, dict):
                wanted = json_merge_patch(scale, patch)
            else:
                raise errors.unsupported_media_type(media, list(_PATCH_TYPES)[:3])
        else:
            raise errors.method_not_allowed()
        if not isinstance(wanted, dict):
            raise errors.bad_request("a Scale must be a JSON object")
        precondition = (wanted.get("metadata") or {}).get("resourceVersion")
        if precondition and precondition != obj["metadata"]["resourceVersion"]:
            raise errors.conflict(kind.plural, kind.group, route.name)
        replicas = (wanted.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise errors.invalid("Scale", "autoscaling", route.name, [errors.Cause(
                "FieldValueInvalid", f"Invalid value: {json.dumps(replicas)}: must be greater than or equal to 0", "spec.replicas")])
        updated = json.loads(json.dumps(obj))
        _set_path(updated, kind.scale[0], replicas)
        result = store.update(kind, route.namespace, route.name, updated, require_precondition=False, dry_run=dry_run)
        return _json_response(scale_of(kind, result.obj))

    def _delete_options(self, raw: aiohttp.web.BaseRequest, body: bytes) -> dict[str, Any]:
        options = self._parse_body(body, raw.headers.get("Content-Type", "")) if body else None
        options = dict(options or {})
        if raw.query.get("propagationPolicy"):
            options["propagationPolicy"] = raw.query["propagationPolicy"]
        if options.get("orphanDependents") is True and not options.get("propagationPolicy"):
            options["propagationPolicy"] = "Orphan"
        policy = options.get("propagationPolicy")
        if policy not in (None, "Background", "Foreground", "Orphan"):
            raise errors.invalid("DeleteOptions", "", "", [errors.Cause(
                "FieldValueNotSupported", f'Unsupported value: "{policy}": supported values: "Foreground", "Background", "Orphan", "nil"',
                "propagationPolicy")])
        return options

    # --- rendering ---------------------------------------------------------------------------

    @staticmethod
    def _render(kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        """The object as served at the requested version (one storage for all versions, no conversion)."""
        if obj.get("apiVersion") == kind.api_version:
            return obj
        return {**obj, "apiVersion": kind.api_version}

    def _render_one(self, kind: Kind, obj: dict[str, Any], as_table: bool, accept: str, include_object: str) -> dict[str, Any]:
        if as_table:
            return tables.table(kind, [self._render(kind, obj)], resource_version=obj["metadata"]["resourceVersion"],
                                include_object=include_object)
        if "as=PartialObjectMetadata" in accept:
            return tables.partial_metadata(obj)
        return self._render(kind, obj)

    def _list(self, raw: aiohttp.web.BaseRequest, route: Route, as_table: bool, accept: str) -> aiohttp.web.Response:
        query, kind = raw.query, route.kind
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), kind.field_selectors)
        items = self.store.list_objects(kind, route.namespace, labels, fields)
        list_rv = self.store.resource_version
        if query.get("continue"):
            start, list_rv = parse_continue_token(query["continue"])
            items = [obj for obj in items if (obj["metadata"].get("namespace", ""), obj["metadata"]["name"]) > start]
        token = None
        remaining = 0
        limit = int(query.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            remaining = len(items) - limit
            items = items[:limit]
            last = items[-1]["metadata"]
            token = continue_token(last.get("namespace", ""), last["name"], list_rv)
        if as_table:
            body = tables.table(kind, [self._render(kind, obj) for obj in items], resource_version=str(list_rv),
                                include_object=query.get("includeObject", "Metadata"), continue_token=token)
            return _json_response(body)
        metadata: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if token:
            metadata["continue"] = token
            metadata["remainingItemCount"] = remaining
        if "as=PartialObjectMetadataList" in accept:
            return _json_response({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
                                   "items": [tables.partial_metadata(obj) for obj in items]})
        if kind.custom:
            rendered = [self._render(kind, obj) for obj in items]
        else:  # typed lists of built-in kinds carry no apiVersion/kind on their items
            rendered = [{key: value for key, value in obj.items() if key not in ("apiVersion", "kind")} for obj in items]
        return _json_response({"kind": kind.list_kind, "apiVersion": kind.api_version, "metadata": metadata, "items": rendered})

    # --- watching --------------------------------------------------------------------------------

    async def _watch(self, raw: aiohttp.web.BaseRequest, route: Route, as_table: bool,
                     record: RecordedRequest) -> aiohttp.web.StreamResponse:
        query, kind = raw.query, route.kind
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), kind.field_selectors)
        if route.name is not None:  # the deprecated watch of one named object
            fields = parse_field_selector(f"metadata.name={route.name}", kind.field_selectors)
        try:
            # 0 or absent: the server's own (long) timeout, as on a real server.
            timeout = float(query.get("timeoutSeconds") or 0) or DEFAULT_WATCH_TIMEOUT_S
        except ValueError:
            raise errors.bad_request(f"invalid timeoutSeconds: {query.get('timeoutSeconds')!r}") from None
        bookmarks = _bool_param(query.get("allowWatchBookmarks"))
        initial_events = _bool_param(query.get("sendInitialEvents"))
        wakeup = asyncio.Event()
        watcher = Watcher(kind, route.namespace, labels, fields, wakeup=wakeup.set)
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        expired: ApiError | None = None
        try:
            self.store.watch(watcher, query.get("resourceVersion"), initial_events=initial_events)
        except ApiError as error:
            if error.code != 410:
                raise
            expired = error  # a real server answers 200 and sends the 410 as an ERROR event
        await response.prepare(raw)
        record.status = response.status
        try:
            if expired is not None:
                await response.write(self._event_line({"type": "ERROR", "object": expired.status()}, kind, as_table))
                return response
            if initial_events and bookmarks:
                watcher.queue.append({"type": "BOOKMARK", "initial_events_end": True})
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                while watcher.queue:
                    event = watcher.queue.popleft()
                    if event is None:
                        return response
                    if event["type"] == "BOOKMARK":
                        await response.write(self._bookmark(kind, initial_events_end=True))
                    else:
                        await response.write(self._event_line(event, kind, as_table))
                remaining = deadline - loop.time()
                if remaining <= 0 or self._shutting_down.is_set():
                    break
                wakeup.clear()
                if watcher.queue:
                    continue
                try:
                    await asyncio.wait_for(wakeup.wait(), timeout=min(remaining, 1.0))
                except TimeoutError:
                    transport = raw.transport
                    if transport is None or transport.is_closing():
                        return response
            if bookmarks:
                await response.write(self._bookmark(kind))
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            return response
        finally:
            self.store.unwatch(watcher)
        try:
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    def _event_line(self, event: dict[str, Any], kind: Kind, as_table: bool) -> bytes:
        obj = event["object"]
        if event["type"] != "ERROR":
            obj = self._render(kind, obj)
            if as_table:
                obj = tables.table(kind, [obj], resource_version=obj["metadata"]["resourceVersion"])
        return json.dumps({"type": event["type"], "object": obj}).encode() + b"\n"

    def _bookmark(self, kind: Kind, *, initial_events_end: bool = False) -> bytes:
        metadata: dict[str, Any] = {"resourceVersion": str(self.store.resource_version)}
        if initial_events_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        event = {"type": "BOOKMARK", "object": {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": metadata}}
        return json.dumps(event).encode() + b"\n"
