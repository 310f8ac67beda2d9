"""Which resource a URL names, the way the real server reads its paths, and what a resource request asks.

`/api/{version}/...` (the core group) and `/apis/{group}/{version}/...`, then
optionally `namespaces/{namespace}/`, then `{plural}[/{name}[/{subresource}]]`.
`/api/v1/namespaces/{name}` is the Namespace itself: the `namespaces/` prefix is
read as a namespace only when a namespaced kind follows it. Discovery paths
(`/`, `/version`, `/api`, `/apis[/{group}[/{version}]]`, `/openapi/v3[/...]`)
name documents (discovery.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp.web
from multidict import MultiMapping

from kascade.testing import discovery, errors
from kascade.testing.kinds import Kind, KindRegistry
from kascade.testing.recording import RecordedRequest
from kascade.testing.wire import parse_body


@dataclass
class Route:
    group: str
    version: str
    kind: Kind
    namespace: str | None
    name: str | None
    subresource: str | None


def resolve(kinds: KindRegistry, method: str, path: str) -> dict[str, Any] | Route:
    """The discovery document at `path`, or the resource route it names; 404 or 405 for anything else."""
    if method != "GET" and not path.startswith(("/api/", "/apis/")):
        raise errors.method_not_allowed()
    document = discovery.fixed_document(kinds, path)
    if document is not None:
        return document
    segments = [segment for segment in path.split("/") if segment]
    if segments[0] == "api" and len(segments) >= 2:
        group, version, rest = "", segments[1], segments[2:]
    elif segments[0] == "apis" and len(segments) >= 2:
        if len(segments) == 2:
            group_doc = discovery.api_group(kinds, segments[1])
            if group_doc is None or method != "GET":
                raise errors.resource_not_found()
            return group_doc
        group, version, rest = segments[1], segments[2], segments[3:]
    else:
        raise errors.resource_not_found()
    if not rest:
        resource_list = discovery.api_resource_list(kinds, group, version)
        if resource_list is None or method != "GET":
            raise errors.resource_not_found()
        return resource_list
    return _route(kinds, group, version, rest)


def _route(kinds: KindRegistry, group: str, version: str, rest: list[str]) -> Route:
    namespace = None
    if (
        rest[0] == "namespaces"
        and len(rest) >= 3
        and (k := kinds.get(group, version, rest[2])) is not None
        and k.namespaced
    ):
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
    return Route(group, version, kind, namespace, name, subresource)


@dataclass
class ResourceRequest:
    """A request to a resource URL, with the options every verb reads (checked once, 400 for bad values)."""

    raw: aiohttp.web.BaseRequest
    method: str
    route: Route
    body: bytes
    record: RecordedRequest
    dry_run: bool
    field_validation: str

    @classmethod
    def parse(
        cls, raw: aiohttp.web.BaseRequest, method: str, route: Route, body: bytes, record: RecordedRequest
    ) -> ResourceRequest:
        field_validation = raw.query.get("fieldValidation", "Warn") or "Warn"
        if field_validation not in ("Ignore", "Warn", "Strict"):
            raise errors.bad_request(
                f'fieldValidation parameter unsupported: "{field_validation}"; valid values: Ignore, Warn, Strict'
            )
        dry_run_values = raw.query.getall("dryRun", [])
        if any(value != "All" for value in dry_run_values):
            raise errors.bad_request(f"unsupported dryRun value(s): {dry_run_values}; the only supported value is All")
        return cls(raw, method, route, body, record, dry_run=bool(dry_run_values), field_validation=field_validation)

    @property
    def query(self) -> MultiMapping[str]:
        return self.raw.query

    @property
    def kind(self) -> Kind:
        return self.route.kind

    @property
    def accept(self) -> str:
        return self.raw.headers.get("Accept", "")

    @property
    def as_table(self) -> bool:
        return "as=Table" in self.accept

    @property
    def content_type(self) -> str:
        return self.raw.headers.get("Content-Type", "")

    def parsed_body(self) -> Any:
        return parse_body(self.body, self.content_type)
