"""Compare API requests with RBAC rules, as the API server's authorizer would.

A helper module of tests/charts, and the hook for the operator's end-to-end
test: record the operator's requests against the API-server stand-in, render
the chart's Roles, and ask which calls the Roles would refuse and which
granted permissions the operator never used:

    from rbac_coverage import check_rbac            # tests/charts on sys.path
    report = check_rbac(server.requests, roles)     # RecordedRequest objects or (method, path[, query]) tuples
    assert report.not_allowed == [], report.explain()
    assert report.unused == [], report.explain()

`roles` are rendered Role and ClusterRole manifests, taken as bound to the
operator's ServiceAccount (a Role grants in its own namespace, a ClusterRole
everywhere). Requests to non-resource URLs (/api, /apis, /version, /openapi,
/healthz...) are left out: every authenticated user may make them
(system:discovery). Request parsing follows the API server's RequestInfo
(k8s.io/apiserver/pkg/endpoints/request/requestinfo.go).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

# /api/v1/namespaces/{name}/status and /finalize are subresources of the Namespace itself.
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


@dataclass(frozen=True, order=True)
class ApiCall:
    """A request in RBAC's terms. `resource` carries its subresource: `modelcascades/status`."""

    verb: str
    group: str
    resource: str
    namespace: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else " (cluster)"
        named = f" {self.name}" if self.name else ""
        return f"{self.verb} {self.resource}{'.' + self.group if self.group else ''}{named}{where}"


@dataclass(frozen=True, order=True)
class Grant:
    """One (verb, group, resource) a rule grants, and where: a Role's namespace, or None for a ClusterRole."""

    verb: str
    group: str
    resource: str
    namespace: str | None = None
    role: str = ""

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else " (cluster-wide)"
        return f"{self.verb} {self.resource}{'.' + self.group if self.group else ''}{where} [{self.role}]"


@dataclass
class RbacReport:
    """`not_allowed`: calls no rule allows. `unused`: grants no call used. `calls`: every resource call seen."""

    calls: list[ApiCall] = field(default_factory=list)
    not_allowed: list[ApiCall] = field(default_factory=list)
    unused: list[Grant] = field(default_factory=list)

    def explain(self) -> str:
        lines = [f"{len(self.calls)} API calls checked"]
        lines += [f"  NOT ALLOWED: {call}" for call in self.not_allowed]
        lines += [f"  UNUSED: {grant}" for grant in self.unused]
        return "\n".join(lines)


def api_call(method: str, path: str, query: Mapping[str, Any] | None = None) -> ApiCall | None:
    """The RBAC attributes of one request, or None for a non-resource URL.

    `path` may carry its query string (`...?watch=true`); `query` adds to it.
    """
    split = urlsplit(path)
    params = {key: values[-1] for key, values in parse_qs(split.query).items()}
    params.update({key: str(value) for key, value in (query or {}).items()})
    parts = [part for part in split.path.split("/") if part]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None  # /api, /apis, /apis/{group}, /version, /openapi/..., /healthz: discovery
    if not rest:
        return None  # /api/v1, /apis/{group}/{version}: discovery
    watch = params.get("watch", "").lower() in ("true", "1")
    if rest[0] == "watch":  # the deprecated /api/v1/watch/... form
        watch, rest = True, rest[1:]
    namespace = None
    if rest[0] == "namespaces" and len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
        namespace, rest = rest[1], rest[2:]
    elif rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]  # the Namespace object itself is in its own namespace, as the server says
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    method = method.upper()
    if method in ("GET", "HEAD"):
        verb = "watch" if watch else ("get" if name else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    elif method in _METHOD_VERBS:
        verb = _METHOD_VERBS[method]
    else:
        verb = method.lower()
    return ApiCall(verb=verb, group=group, resource=resource, namespace=namespace, name=name)


def _as_call(request: Any) -> ApiCall | None:
    if isinstance(request, ApiCall):
        return request
    if isinstance(request, tuple):
        return api_call(*request)
    return api_call(request.method, request.path, getattr(request, "query", None))


def _resource_matches(pattern: str, resource: str) -> bool:
    if pattern in ("*", resource):
        return True
    _, _, sub = resource.partition("/")
    return bool(sub) and pattern == f"*/{sub}"


def _matching_grants(rule: Mapping[str, Any], call: ApiCall) -> list[tuple[str, str, str]]:
    """The (verb, group, resource) entries of `rule` that allow `call`; empty when the rule does not."""
    names = rule.get("resourceNames") or []
    if names and call.name not in names:
        return []
    return [
        (verb, group, resource)
        for verb in rule.get("verbs", [])
        if verb in ("*", call.verb)
        for group in rule.get("apiGroups", [])
        if group in ("*", call.group)
        for resource in rule.get("resources", [])
        if _resource_matches(resource, call.resource)
    ]


def _role_applies(role: Mapping[str, Any], call: ApiCall) -> bool:
    if role.get("kind") == "ClusterRole":
        return True
    return call.namespace is not None and call.namespace == role.get("metadata", {}).get("namespace")


def grants(roles: Iterable[Mapping[str, Any]]) -> list[Grant]:
    """Every (verb, group, resource) the roles grant, one per namespace (None: cluster-wide)."""
    result = set()
    for role in roles:
        if role.get("kind") not in ("Role", "ClusterRole"):
            continue
        namespace = role["metadata"].get("namespace") if role["kind"] == "Role" else None
        label = f"{role['kind']} {role['metadata']['name']}"
        for rule in role.get("rules") or []:
            for verb in rule.get("verbs", []):
                for group in rule.get("apiGroups", []):
                    for resource in rule.get("resources", []):
                        result.add(Grant(verb, group, resource, namespace, label))
    return sorted(result)


def check_rbac(requests: Iterable[Any], roles: Iterable[Mapping[str, Any]]) -> RbacReport:
    """Which recorded requests the roles do not allow, and which of their grants no request used.

    `requests`: `kascade.testing.RecordedRequest` objects (or anything with
    `.method`, `.path` and optionally `.query`), `(method, path)` or
    `(method, path, query)` tuples, or `ApiCall`s. `roles`: rendered Role and
    ClusterRole manifests (other kinds are ignored).
    """
    roles = [role for role in roles if role.get("kind") in ("Role", "ClusterRole")]
    report = RbacReport()
    used: set[tuple[str, str, str, str | None]] = set()
    for request in requests:
        call = _as_call(request)
        if call is None:
            continue
        report.calls.append(call)
        allowed = False
        for role in roles:
            if not _role_applies(role, call):
                continue
            namespace = role["metadata"].get("namespace") if role["kind"] == "Role" else None
            for rule in role.get("rules") or []:
                for verb, group, resource in _matching_grants(rule, call):
                    allowed = True
                    used.add((verb, group, resource, namespace))
        if not allowed and call not in report.not_allowed:
            report.not_allowed.append(call)
    report.unused = [
        grant for grant in grants(roles) if (grant.verb, grant.group, grant.resource, grant.namespace) not in used
    ]
    report.not_allowed.sort()
    return report
