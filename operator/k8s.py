"""The operator's own access to the Kubernetes API: a small async REST client and the apply layer.

Kopf watches the ModelCascades and calls the handlers; everything the handlers
read or write besides that goes through `KubeApi`:

- credentials and TLS come from the official `kubernetes` package's config
  loaders (in-cluster service account, else `$KUBECONFIG` / ~/.kube/config,
  exec plugins and client certificates included), read once at startup;
- requests are plain `aiohttp` on kopf's event loop (no thread pool, no
  blocking calls), JSON in and out, one pooled session per operator.

The apply layer (`apply_plan`) executes a `plan.Plan`: creates, then replaces
(PUT with the observed `resourceVersion`: optimistic concurrency, and fields
removed from the desired manifest disappear, which a merge patch would not
do), then deletes. `OPERATOR_RULES` lists every API call the operator makes,
as RBAC rules; tests compare it with the requests recorded by the API-server
stand-in, and docs/operator.md explains each rule.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote

import aiohttp
from kascade.api.modelcascade import GROUP, PLURAL, VERSION
from kascade.operator.builders import CHILD_KINDS
from kascade.operator.plan import ChildKey, Plan, child_key

from kascade import __version__

USER_AGENT = f"kascade-operator/{__version__}"
MODELCASCADE_API_VERSION = f"{GROUP}/{VERSION}"
_REQUEST_TIMEOUT_S = 30.0
_LIST_PAGE_SIZE = 500
# Annotation and label prefixes the operator owns on its children; keys under
# other prefixes belong to someone else (a controller, a user) and survive a replace.
_OWNED_PREFIXES = ("kascade.dev/", "app.kubernetes.io/")

PLURALS: dict[tuple[str, str], str] = {(kind.api_version, kind.kind): kind.plural for kind in CHILD_KINDS}


@dataclass(frozen=True)
class RbacRule:
    """One rule of the operator's ClusterRole (or Role, when it watches one namespace)."""

    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    cluster_scoped: bool = False


# Every call the operator (kopf included) makes. Keep in step with docs/operator.md.
OPERATOR_RULES: tuple[RbacRule, ...] = (
    RbacRule(GROUP, (PLURAL,), ("get", "list", "watch"),
             "kopf watches the cascades; the handlers re-read one after a status write conflict"),
    RbacRule(GROUP, (PLURAL,), ("patch",),
             "kopf's finalizer (the drift timer needs it) and its annotations kascade.dev/last-handled-configuration "
             "and progress"),
    RbacRule(GROUP, (f"{PLURAL}/status",), ("get", "patch"),
             "status writes; `get` also because the operator creates each router's Role granting get+patch on it "
             "(RBAC forbids granting what one does not hold)"),
    RbacRule("", ("events",), ("create",), "kopf.event/kopf.warn and kopf's own error events"),
    RbacRule("apiextensions.k8s.io", ("customresourcedefinitions",), ("list", "watch"),
             "kopf finds the ModelCascade resource and notices when its CRD changes", cluster_scoped=True),
    RbacRule("", ("namespaces",), ("list", "watch"),
             "kopf's namespace observer (it follows namespaces even when given exact names)", cluster_scoped=True),
    RbacRule("", ("serviceaccounts", "configmaps", "services"), ("list", "get", "create", "update", "delete"),
             "the router's ServiceAccount and ConfigMap; tier and router Services"),
    RbacRule("apps", ("deployments",), ("list", "get", "create", "update", "delete"), "tier and router Deployments"),
    RbacRule("rbac.authorization.k8s.io", ("roles", "rolebindings"), ("list", "get", "create", "update", "delete"),
             "the router's Role and RoleBinding (its own status slot)"),
    RbacRule("", ("secrets",), ("get",), "check that referenced Secrets exist and hold their keys (values unread)"),
    RbacRule("", ("pods",), ("list",), "which router pods exist, to retire the counter slots of the gone ones"),
    RbacRule("", ("nodes",), ("list",),
             "which nvidia.com/gpu.product values nodes offer (optional: without it the GPU check is skipped)",
             cluster_scoped=True),
)  # fmt: skip


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


_TOKEN_REFRESH_S = 30.0  # how often a refreshable token (exec plugin, projected service-account token) is re-read


def _bearer(configuration: Any) -> str | None:
    """The Authorization header value the kubernetes package would send (runs its refresh hook)."""
    for key in ("BearerToken", "authorization"):  # newer clients, older clients
        value = configuration.get_api_key_with_prefix(key)
        if value:
            return value
    if configuration.username and configuration.password:
        return configuration.get_basic_auth_token()
    return None


@dataclass
class Credentials:
    """Where the API server is and how to authenticate, as the kubernetes package's loaders found them."""

    host: str
    ssl: ssl.SSLContext | bool
    headers: dict[str, str]
    server_hostname: str | None = None
    configuration: Any = None  # kept when its token must be refreshed (exec plugins, projected tokens)
    _refreshed_at: float = field(default=0.0, repr=False)

    @classmethod
    def from_environment(cls) -> Credentials:
        """In-cluster service account if present, else the kubeconfig (`$KUBECONFIG`, read now, not at import)."""
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration)
        return cls.from_configuration(configuration)

    @classmethod
    def from_configuration(cls, configuration: Any) -> Credentials:
        context: ssl.SSLContext | bool = False
        if configuration.host.startswith("https://"):
            if configuration.verify_ssl:
                context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
            else:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if configuration.cert_file:
                context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
        token = _bearer(configuration)
        return cls(
            host=configuration.host.rstrip("/"),
            ssl=context,
            headers={"Authorization": token} if token else {},
            server_hostname=getattr(configuration, "tls_server_name", None) or None,
            configuration=configuration if getattr(configuration, "refresh_api_key_hook", None) else None,
            _refreshed_at=time.monotonic(),
        )

    async def auth_headers(self) -> dict[str, str]:
        if self.configuration is not None and time.monotonic() - self._refreshed_at > _TOKEN_REFRESH_S:
            self._refreshed_at = time.monotonic()
            # The hook may run an exec plugin or read a file: keep it off the event loop.
            token = await asyncio.to_thread(_bearer, self.configuration)
            self.headers = {"Authorization": token} if token else {}
        return self.headers


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
        self, api_version: str, plural: str, *, namespace: str | None = None, label_selector: str | None = None,
        kind: str | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
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

    async def get(self, api_version: str, plural: str, name: str, *, namespace: str | None = None) -> dict[str, Any] | None:
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
        path = resource_path(api_version, plural_of(api_version, kind), namespace=metadata.get("namespace"),
                             name=metadata["name"])  # fmt: skip
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


# --- the apply layer ------------------------------------------------------------------------


def replacement(desired: Mapping[str, Any], observed: Mapping[str, Any]) -> dict[str, Any]:
    """The body of a PUT that turns `observed` into `desired`.

    The desired manifest whole (so removed fields go away), plus what is not
    ours to drop: the observed resourceVersion (optimistic concurrency),
    finalizers, other owners' references, and labels and annotations under
    other prefixes than kascade.dev/ and app.kubernetes.io/ (e.g. the
    Deployment controller's `deployment.kubernetes.io/revision`).
    """
    body = copy.deepcopy(dict(desired))
    meta = body.setdefault("metadata", {})
    seen = observed.get("metadata") or {}
    meta["resourceVersion"] = seen.get("resourceVersion")
    for key in ("labels", "annotations"):
        foreign = {k: v for k, v in (seen.get(key) or {}).items() if not k.startswith(_OWNED_PREFIXES)}
        merged = {**foreign, **(meta.get(key) or {})}
        if merged:
            meta[key] = merged
    if seen.get("finalizers"):
        meta["finalizers"] = list(seen["finalizers"])
    ours = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
    others = [ref for ref in seen.get("ownerReferences") or [] if ref.get("uid") not in ours]
    if others:
        meta["ownerReferences"] = [*others, *(meta.get("ownerReferences") or [])]
    return body


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
            if await api.delete(ref.api_version, plural_of(ref.api_version, ref.kind), ref.name,
                                namespace=namespace, uid=uid):  # fmt: skip
                report.deleted.append(key)
        except ApiError as error:
            if error.conflict:  # replaced by a new object of that name since we looked
                report.stale = True
            else:
                report.failures.append(_describe(error, "delete", key))
    return report


__all__ = [
    "OPERATOR_RULES",
    "USER_AGENT",
    "ApiError",
    "ApplyReport",
    "Credentials",
    "KubeApi",
    "RbacRule",
    "apply_plan",
    "plural_of",
    "replacement",
    "resource_path",
    "rule_allows",
]


def rule_allows(rules: Sequence[RbacRule], *, verb: str, group: str, resource: str) -> bool:
    """Whether `rules` grant `verb` on `resource` (`plural` or `plural/subresource`) of `group`."""
    return any(rule.api_group == group and resource in rule.resources and verb in rule.verbs for rule in rules)
