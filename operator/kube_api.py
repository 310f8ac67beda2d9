"""The operator's own access to the Kubernetes API: a small async REST client.

Kopf watches the ModelCascades and calls the handlers; everything the handlers
read or write besides that goes through `KubeApi`: plain `aiohttp` on kopf's
event loop (no thread pool, no blocking calls), JSON in and out, one pooled
session per operator for short calls and one for watches (`watch_cache` keeps
the children from them). Credentials and TLS come from `kube_credentials`.
Every call it makes is listed, with why, in `permissions.OPERATOR_RULES`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote

import aiohttp

from kascade import __version__
from kascade.api.distillation import DISTILLATION_KIND, DISTILLATION_PLURAL
from kascade.api.modelcascade import API_VERSION
from kascade.operator.builders import CHILD_KINDS, KEDA_CHILD_KINDS
from kascade.operator.kube_credentials import Credentials

USER_AGENT = f"kascade-operator/{__version__}"
_REQUEST_TIMEOUT_S = 30.0
_LIST_PAGE_SIZE = 500
_WATCH_SILENCE_S = 60.0  # a watch that sends nothing this long past its timeout is broken

Objects = list[dict[str, Any]]  # what a list answers (named here: inside KubeApi, `list` is the verb)

PLURALS: dict[tuple[str, str], str] = {
    **{(kind.api_version, kind.kind): kind.plural for kind in (*CHILD_KINDS, *KEDA_CHILD_KINDS)},
    ("batch/v1", "Job"): "jobs",  # a distillation run's
    (API_VERSION, DISTILLATION_KIND): DISTILLATION_PLURAL,  # the runs a cascade's schedule creates
}


class ApiError(Exception):
    """A non-2xx answer of the API server (or a transport failure, status 0)."""

    def __init__(self, status: int, reason: str, message: str, *, method: str = "", path: str = "") -> None:
        super().__init__(f"{method} {path}: HTTP {status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: a stale resourceVersion (reason Conflict) or a name taken (reason AlreadyExists)."""
        return self.status == 409

    @property
    def forbidden(self) -> bool:
        return self.status in (401, 403)

    @property
    def transient(self) -> bool:
        """The same call may succeed later: the server failed (5xx), or it was never reached (status 0: no
        answer came, the connection failed or timed out). Anything else is the server's answer to this request."""
        return self.status >= 500 or self.status == 0


def _answer_error(status: int, payload: Any, text: str, *, method: str, path: str) -> ApiError:
    """The `ApiError` of a non-2xx answer: the Status object's reason and message, else the body's start."""
    reason = payload.get("reason", "") if isinstance(payload, dict) else ""
    message = payload.get("message", text[:300]) if isinstance(payload, dict) else text[:300]
    return ApiError(status, reason, message, method=method, path=path)


def resource_path(
    api_version: str,
    plural: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """`/api/v1/namespaces/ns/configmaps/x` or `/apis/apps/v1/...`; `namespace` None: cluster-wide."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    parts = [base]
    if namespace is not None:
        parts.append(f"namespaces/{quote(namespace, safe='')}")
    parts.append(plural)
    if name is not None:
        parts.append(quote(name, safe=""))
    if subresource is not None:
        parts.append(subresource)
    return "/".join(parts)


async def _json_lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The non-empty lines of a watch stream, whatever their length (an event is one JSON document per line)."""
    buffer = bytearray()
    async for chunk in content.iter_any():
        buffer.extend(chunk)
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield line
    if buffer.strip():
        yield bytes(buffer)


def plural_of(api_version: str, kind: str) -> str:
    try:
        return PLURALS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the operator does not manage {api_version} {kind}") from None


@dataclass
class KubeApi:
    """JSON REST calls to the API server on one pooled aiohttp session. Open with `async with` or `open()`."""

    credentials: Credentials
    user_agent: str = USER_AGENT
    timeout_s: float = _REQUEST_TIMEOUT_S
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)
    _watch_session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    async def open(self) -> Self:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=32, ssl=self.credentials.ssl)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"User-Agent": self.user_agent, "Accept": "application/json"},
            )
        if self._watch_session is None:
            self._watch_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=self.credentials.ssl),
                headers={"User-Agent": self.user_agent, "Accept": "application/json"},
            )
        return self

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()
        self._session = self._watch_session = None

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """One call; the decoded JSON answer. Raises `ApiError` for a non-2xx answer or a transport failure."""
        if self._session is None:
            raise RuntimeError("KubeApi is not open")
        headers = dict(await self.credentials.auth_headers())
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        extra: dict[str, Any] = {}
        if self.credentials.server_hostname:
            extra["server_hostname"] = self.credentials.server_hostname
        url = self.credentials.host + path
        try:
            async with self._session.request(
                method, url, params=dict(query or {}), data=data, headers=headers, **extra
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ApiError(0, "Unreachable", f"{type(error).__name__}: {error}", method=method, path=path) from error
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = None
        if status >= 400:
            raise _answer_error(status, payload, text, method=method, path=path)
        return payload

    # --- verbs ----------------------------------------------------------------------------

    async def list(
        self,
        api_version: str,
        plural: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        kind: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every object (all pages). Items get `apiVersion` and `kind` back (typed lists leave them out)."""
        items, _ = await self.list_versioned(
            api_version, plural, namespace=namespace, label_selector=label_selector, kind=kind
        )
        return items

    async def list_versioned(
        self,
        api_version: str,
        plural: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        kind: str | None = None,
    ) -> tuple[Objects, str]:
        """`list`, and the list's resourceVersion: a watch from it sees every change after the list."""
        query: dict[str, str] = {"limit": str(_LIST_PAGE_SIZE)}
        if label_selector:
            query["labelSelector"] = label_selector
        items: Objects = []
        path = resource_path(api_version, plural, namespace=namespace)
        version = ""
        while True:
            page = await self.request("GET", path, query=query)
            item_kind = kind or str(page.get("kind", "")).removesuffix("List")
            for item in page.get("items") or []:
                item.setdefault("apiVersion", api_version)
                if item_kind:
                    item.setdefault("kind", item_kind)
                items.append(item)
            metadata = page.get("metadata") or {}
            version = version or str(metadata.get("resourceVersion") or "")  # the first page's: the snapshot's
            token = metadata.get("continue")
            if not token:
                return items, version
            query["continue"] = token

    async def watch(
        self,
        api_version: str,
        plural: str,
        *,
        namespace: str | None,
        label_selector: str | None,
        resource_version: str,
        timeout_s: float,
    ) -> AsyncIterator[dict[str, Any]]:
        """The events after `resource_version` (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR), as the server sends them,
        until it ends the watch (after `timeout_s`). Raises `ApiError` when the watch is refused or the stream breaks.

        Watches hold their connection for minutes: they have a session of their own, so that they never take the
        pooled connections of the short calls.
        """
        if self._watch_session is None:
            raise RuntimeError("KubeApi is not open")
        query = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(max(int(timeout_s), 1)),
        }
        if label_selector:
            query["labelSelector"] = label_selector
        path = resource_path(api_version, plural, namespace=namespace)
        headers = dict(await self.credentials.auth_headers())
        extra: dict[str, Any] = {}
        if self.credentials.server_hostname:
            extra["server_hostname"] = self.credentials.server_hostname
        # No total timeout: the server ends the watch. A silent stream (no event, no bookmark) is a broken one.
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout_s, sock_read=timeout_s + _WATCH_SILENCE_S)
        try:
            async with self._watch_session.get(
                self.credentials.host + path, params=query, headers=headers, timeout=timeout, **extra
            ) as response:
                if response.status >= 400:
                    text = await response.text()
                    try:
                        payload = json.loads(text) if text else None
                    except ValueError:
                        payload = None
                    raise _answer_error(response.status, payload, text, method="GET", path=path)
                async for line in _json_lines(response.content):
                    yield json.loads(line)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ApiError(0, "Unreachable", f"{type(error).__name__}: {error}", method="WATCH", path=path) from error

    async def get(
        self, api_version: str, plural: str, name: str, *, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        try:
            return await self.request("GET", resource_path(api_version, plural, namespace=namespace, name=name))
        except ApiError as error:
            if error.not_found:
                return None
            raise

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        namespace = (manifest.get("metadata") or {}).get("namespace")
        path = resource_path(api_version, plural_of(api_version, kind), namespace=namespace)
        return await self.request("POST", path, body=manifest)

    async def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: `manifest` replaces the object; its metadata.resourceVersion makes it fail (409) if stale."""
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        metadata = manifest["metadata"]
        path = resource_path(
            api_version, plural_of(api_version, kind), namespace=metadata.get("namespace"), name=metadata["name"]
        )
        return await self.request("PUT", path, body=manifest)

    async def delete(
        self, api_version: str, plural: str, name: str, *, namespace: str | None, uid: str | None = None
    ) -> bool:
        """Delete (dependents in the background); False when it was already gone."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", resource_path(api_version, plural, namespace=namespace, name=name), body=body)
        except ApiError as error:
            if error.not_found:
                return False
            raise
        return True

    async def patch_json(
        self,
        api_version: str,
        plural: str,
        name: str,
        *,
        namespace: str | None,
        operations: Sequence[Mapping[str, Any]],
    ) -> dict[str, Any]:
        """RFC 6902 JSON patch of the object (a failed `test` operation: 422, nothing changed)."""
        path = resource_path(api_version, plural, namespace=namespace, name=name)
        return await self.request("PATCH", path, body=operations, content_type="application/json-patch+json")

    async def patch_status(
        self,
        api_version: str,
        plural: str,
        name: str,
        *,
        namespace: str | None,
        status_patch: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """JSON merge patch of `.status` (nulls delete keys); with `resource_version`, 409 if the object moved on."""
        body: dict[str, Any] = {"status": status_patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        path = resource_path(api_version, plural, namespace=namespace, name=name, subresource="status")
        return await self.request("PATCH", path, body=body, content_type="application/merge-patch+json")
