"""The request log: every request as the server saw it, the RBAC rule it needs, and what it answered."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import kmock

from kascade.testing.errors import ApiError
from kascade.testing.wire import parse_body

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


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


def record_of(request: kmock.Request) -> RecordedRequest:
    """The log entry for a request as it arrives; routing fills in verb and resource, the answer the status."""
    raw = request._raw_request
    assert raw is not None
    content_type = raw.headers.get("Content-Type", "")
    body: Any = None
    if request.body:
        try:
            body = parse_body(request.body, content_type)
        except ApiError:
            body = request.body.decode(errors="replace")
    return RecordedRequest(
        method=raw.method,
        path=raw.path,
        query=dict(raw.query),
        body=body,
        content_type=content_type.split(";")[0].strip(),
        user_agent=raw.headers.get("User-Agent", ""),
    )
