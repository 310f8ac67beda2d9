"""The request log (what the operator asked, for "a no-op reconcile wrote nothing" and RBAC checks) and fault injection."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import kmock
import pytest

from kascade.testing import StandinApiServer

pytestmark = pytest.mark.slow  # the API-server stand-in on loopback

CM = "/api/v1/namespaces/default/configmaps"


@pytest.fixture
def server() -> Iterator[StandinApiServer]:
    with StandinApiServer() as running:
        yield running


def test_every_request_is_recorded(server: StandinApiServer):
    """Each request is kept with method, path, query, parsed body, user agent, RBAC verb/resource and the answer's code."""
    mark = server.mark()
    with httpx.Client(base_url=server.url, headers={"User-Agent": "kascade-operator/0.1"}) as api:
        api.post(CM, json={"metadata": {"name": "rec", "labels": {"a": "b"}}})
        api.get(CM, params={"labelSelector": "a=b"})
        api.patch(f"{CM}/rec", json={"data": {"k": "v"}}, headers={"Content-Type": "application/merge-patch+json"})
        api.get(f"{CM}/missing")
    create, listing, patch, missing = server.requests[mark:]
    assert (create.method, create.path, create.verb, create.resource, create.namespace, create.status) == (
        "POST",
        CM,
        "create",
        "configmaps",
        "default",
        201,
    )
    assert (
        create.body == {"metadata": {"name": "rec", "labels": {"a": "b"}}}
        and create.user_agent == "kascade-operator/0.1"
    )
    assert (listing.verb, listing.query) == ("list", {"labelSelector": "a=b"})
    assert (patch.verb, patch.name, patch.content_type, patch.group) == (
        "patch",
        "rec",
        "application/merge-patch+json",
        "",
    )
    assert (missing.verb, missing.status) == ("get", 404)
    assert [r.verb for r in server.writes(since=mark)] == ["create", "patch"]


def test_requests_name_the_rbac_rule_they_need(server: StandinApiServer):
    """Each API request maps to the (apiGroup, resource, verb) a Role rule must grant, subresources included."""
    mark = server.mark()
    with httpx.Client(base_url=server.url) as api:
        api.get("/apis/apps/v1")  # discovery needs no rule
        with api.stream("GET", "/apis/apps/v1/namespaces/default/deployments", params={"watch": "true"}):
            pass  # the watch is recorded when it starts
        api.patch(
            "/apis/apps/v1/namespaces/default/deployments/x/status",
            json={},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        api.post("/api/v1/namespaces/default/events", json={"metadata": {"generateName": "e-"}, "involvedObject": {}})
    assert [r.rbac for r in server.requests[mark:]] == [
        None,
        ("apps", "deployments", "watch"),
        ("apps", "deployments/status", "patch"),
        ("", "events", "create"),
    ]


def test_reads_are_not_writes(server: StandinApiServer):
    """`writes()` lists only requests that could change state, so a test can assert that a no-op pass wrote nothing."""
    mark = server.mark()
    with httpx.Client(base_url=server.url) as api:
        api.get(CM)
        api.get("/apis/apps/v1/namespaces/default/deployments")
    assert server.writes(since=mark) == []


def test_faults_can_be_injected_with_kmock_reactions(server: StandinApiServer):
    """A kmock reaction added to the handler answers matching requests first (here: a 500 on creating ConfigMaps)."""
    assert server.handler is not None
    server.handler["post", kmock.resource("", "v1", "configmaps")] << 503
    with httpx.Client(base_url=server.url) as api:
        assert api.post(CM, json={"metadata": {"name": "faulty"}}).status_code == 503
        assert api.get(CM).status_code == 200  # everything else is still served
    assert server.get("configmaps", "faulty") is None
    assert [(r.method, r.status) for r in server.requests[-2:]] == [("POST", 503), ("GET", 200)]
