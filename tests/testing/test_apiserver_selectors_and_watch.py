"""Label/field selectors on list and watch, and watch semantics, as on a real API server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from kascade.testing import StandinApiServer
from kascade.testing.selectors import parse_label_selector

pytestmark = pytest.mark.slow  # the API-server stand-in on loopback

CM = "/api/v1/namespaces/default/configmaps"


@pytest.fixture(scope="module")
def server() -> Iterator[StandinApiServer]:
    with StandinApiServer() as running:
        yield running


@pytest.fixture(scope="module")
def labelled(server: StandinApiServer) -> None:
    for name, labels in {
        "sel-a": {"tier": "small", "app": "kascade"},
        "sel-b": {"tier": "large", "app": "kascade"},
        "sel-c": {"tier": "router", "app": "other"},
        "sel-d": {"app": "kascade"},
    }.items():
        server.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}})


def names(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(
        item["metadata"]["name"] for item in response.json()["items"] if item["metadata"]["name"].startswith("sel-")
    )


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("tier=small", ["sel-a"]),
        ("tier==small", ["sel-a"]),
        ("app=kascade,tier!=small", ["sel-b", "sel-d"]),
        ("tier in (small, large)", ["sel-a", "sel-b"]),
        ("tier notin (small,large)", ["sel-c", "sel-d"]),
        ("tier", ["sel-a", "sel-b", "sel-c"]),
        ("!tier", ["sel-d"]),
        ("app=kascade,!tier", ["sel-d"]),
    ],
)
def test_list_filters_by_label_selector(api: httpx.Client, labelled: None, selector: str, expected: list[str]):
    """A real API server returns only the objects whose labels satisfy every requirement of ?labelSelector=."""
    assert names(api.get(CM, params={"labelSelector": selector})) == expected


def test_a_malformed_label_selector_is_a_bad_request(api: httpx.Client):
    """A real API server answers 400 BadRequest "unable to parse requirement" for a malformed selector."""
    response = api.get(CM, params={"labelSelector": "tier in small"})
    assert response.status_code == 400 and "unable to parse requirement" in response.json()["message"]


def test_field_selector_on_metadata_name(api: httpx.Client, labelled: None):
    """A real API server filters lists by ?fieldSelector=metadata.name=... (kubectl delete --wait relies on it)."""
    assert names(api.get(CM, params={"fieldSelector": "metadata.name=sel-b"})) == ["sel-b"]
    assert "sel-b" not in names(api.get(CM, params={"fieldSelector": "metadata.name!=sel-b"}))


def test_an_unsupported_field_selector_is_a_bad_request(api: httpx.Client):
    """A real API server answers 400 BadRequest "field label not supported" for fields a kind cannot select on."""
    response = api.get(CM, params={"fieldSelector": "data.x=1"})
    assert response.status_code == 400 and "field label not supported" in response.json()["message"]


def test_label_selector_parser_keeps_commas_inside_sets():
    """Selectors like `a in (x,y),b` are two requirements, as the real parser reads them."""
    selector = parse_label_selector("a in (x,y),b")
    assert len(selector.requirements) == 2
    assert selector.matches({"a": "y", "b": ""}) and not selector.matches({"a": "z", "b": ""})


def test_list_pagination_with_limit_and_continue(api: httpx.Client, labelled: None):
    """A real API server pages a list with ?limit= and a `continue` token; the last page has none."""
    seen: list[str] = []
    params: dict[str, str] = {"limit": "2", "labelSelector": "app"}
    while True:
        page = api.get(CM, params=params).json()
        seen += [item["metadata"]["name"] for item in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
        assert page["metadata"]["remainingItemCount"] > 0
        params["continue"] = token
    assert seen == ["sel-a", "sel-b", "sel-c", "sel-d"]


def test_built_in_list_items_carry_no_kind(api: httpx.Client, labelled: None):
    """A real API server's typed lists (built-in kinds) omit apiVersion/kind on items; the list carries ConfigMapList."""
    body = api.get(CM).json()
    assert body["kind"] == "ConfigMapList" and body["apiVersion"] == "v1"
    assert all("kind" not in item for item in body["items"])


# --- watches -------------------------------------------------------------------------------


def watch_events(server: StandinApiServer, params: dict[str, str]) -> list[dict]:
    with httpx.stream("GET", f"{server.url}{CM}", params={"watch": "true", **params}, timeout=10) as response:
        assert response.status_code == 200
        return [json.loads(line) for line in response.iter_lines() if line]


def test_a_watch_ends_after_timeout_seconds(server: StandinApiServer):
    """A real API server closes a watch stream after ?timeoutSeconds=."""
    started = time.monotonic()
    watch_events(server, {"timeoutSeconds": "1", "labelSelector": "nothing-matches"})
    assert time.monotonic() - started < 5


def test_a_watch_without_resource_version_starts_with_the_current_state(server: StandinApiServer, labelled: None):
    """A real API server sends an ADDED event per existing object to a watch with no resourceVersion."""
    events = watch_events(server, {"timeoutSeconds": "1", "labelSelector": "tier=small"})
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "sel-a")]


def test_a_watch_from_a_resource_version_sends_only_later_events(server: StandinApiServer, api: httpx.Client):
    """A real API server sends a watch only the changes after its ?resourceVersion=, in order, filtered by its selector."""
    api.post(CM, json={"metadata": {"name": "watch-before", "labels": {"w": "rv"}}})
    since = server.resource_version
    api.post(CM, json={"metadata": {"name": "watch-after", "labels": {"w": "rv"}}})
    api.patch(f"{CM}/watch-after", json={"data": {"k": "v"}}, headers={"Content-Type": "application/merge-patch+json"})
    api.post(CM, json={"metadata": {"name": "watch-unlabelled"}})
    api.delete(f"{CM}/watch-after")
    events = watch_events(server, {"resourceVersion": str(since), "timeoutSeconds": "1", "labelSelector": "w=rv"})
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "watch-after"),
        ("MODIFIED", "watch-after"),
        ("DELETED", "watch-after"),
    ]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] > since


def test_an_object_leaving_a_watched_selector_is_deleted_from_the_watch(server: StandinApiServer, api: httpx.Client):
    """A real API server's filtered watch sends DELETED when an object stops matching, ADDED when it starts."""
    api.post(CM, json={"metadata": {"name": "watch-leaves", "labels": {"phase": "in"}}})
    since = server.resource_version
    merge = {"Content-Type": "application/merge-patch+json"}
    api.patch(f"{CM}/watch-leaves", json={"metadata": {"labels": {"phase": "out"}}}, headers=merge)
    api.patch(f"{CM}/watch-leaves", json={"metadata": {"labels": {"phase": "in"}}}, headers=merge)
    events = watch_events(server, {"resourceVersion": str(since), "timeoutSeconds": "1", "labelSelector": "phase=in"})
    assert [e["type"] for e in events] == ["DELETED", "ADDED"]


def test_a_live_watch_receives_changes(server: StandinApiServer, api: httpx.Client):
    """A real API server streams changes to an open watch as they happen."""
    since = server.resource_version
    with httpx.stream(
        "GET",
        f"{server.url}{CM}",
        timeout=10,
        params={"watch": "true", "resourceVersion": str(since), "timeoutSeconds": "5", "labelSelector": "live=yes"},
    ) as response:
        api.post(CM, json={"metadata": {"name": "watch-live", "labels": {"live": "yes"}}})
        lines = response.iter_lines()
        event = json.loads(next(line for line in lines if line))
    assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "watch-live"
    assert event["object"]["kind"] == "ConfigMap"  # watch events carry kind, unlike typed list items


def test_a_too_old_resource_version_is_gone(server: StandinApiServer, api: httpx.Client):
    """A real API server answers a watch from a compacted resourceVersion with an ERROR event: 410 Expired."""
    old = server.resource_version
    api.post(CM, json={"metadata": {"name": "watch-compacted"}})
    server.compact()
    events = watch_events(server, {"resourceVersion": str(old), "timeoutSeconds": "1"})
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"


def test_bookmarks_when_allowed(server: StandinApiServer):
    """A real API server may send BOOKMARK events carrying only a resourceVersion when ?allowWatchBookmarks=true."""
    events = watch_events(
        server, {"resourceVersion": str(server.resource_version), "timeoutSeconds": "1", "allowWatchBookmarks": "true"}
    )
    bookmark = events[-1]
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["object"]["metadata"]["resourceVersion"].isdigit()
    assert set(bookmark["object"]) == {"kind", "apiVersion", "metadata"}
