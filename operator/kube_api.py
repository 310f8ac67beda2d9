"""The operator's own access to the Kubernetes API: a small async REST client.

Kopf watches the ModelCascades and calls the handlers; everything the handlers
read or write besides that goes through `KubeApi`: plain `aiohttp` on kopf's
event loop (no thread pool, no blocking calls), JSON in and out, one pooled
session per operator. Credentials and TLS come from `kube_credentials`.
Every call it makes is listed, with why, in `permissions.OPERATOR_RULES`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote

import aiohttp

from kascade import __version__
from kascade.api.distillation import DISTILLATION_KIND, DISTILLATION_PLURAL
from kascade.api.modelcascade import API_VERSION
from kascade.operator.builders import CHILD_KINDS
from kascade.operator.kube_credentials import Credentials

USER_AGENT = f"kascade-operator/{__version__}"
_REQUEST_TIMEOUT_S = 30.0
_LIST_PAGE_SIZE = 500

PLURALS: dict[tuple[str, str], str] = {
    **{(kind.api_version, kind.kind): kind.plural for kind in CHILD_KINDS},
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

    async def open(self) -> Self:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=32, ssl=self.credentials.ssl)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"User-Agent": self.user_agent, "Accept": "application/json"},
            )
        return self

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
            reason = payload.get("reason", "") if isinstance(payload, dict) else ""
            message = payload.get("message", text[:300]) if isinstance(payload, dict) else text[:300]
            raise ApiError(status, reason, message, method=method, path=path)
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
        query: dict[str, str] = {"limit": str(_LIST_PAGE_SIZE)}
        if label_selector:
            query["labelSelector"] = label_selector
        items: list[dict[str, Any]] = []
        path = resource_path(api_version, plural, namespace=namespace)
        while True:
            page = await self.request("GET", path, query=query)
            item_kind = kind or str(page.get("kind", "")).removesuffix("List")
            for item in page.get("items") or []:
                item.setdefault("apiVersion", api_version)
                if item_kind:
                    item.setdefault("kind", item_kind)
                items.append(item)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            query["continue"] = token

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
