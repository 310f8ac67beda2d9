"""The apply layer against the API-server stand-in: create, replace (removed fields go away), delete, races."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

kopf = pytest.importorskip("kopf")
pytest.importorskip("kmock")

from kascade.operator import kube_api
from kascade.operator.apply import apply_plan
from kascade.operator.builders import CHILD_KINDS, build_children
from kascade.operator.cascade_resource import parse_cascade
from kascade.operator.kube_api import ApiError, KubeApi, resource_path
from kascade.operator.kube_credentials import Credentials
from kascade.operator.labels import label_value, owned_selector, selector_string
from kascade.operator.permissions import OPERATOR_RULES, rule_allows
from kascade.operator.plan import index_children, plan_children
from kascade.operator.replacement import replacement
from kascade.operator.settings import OperatorSettings
from kascade.testing import StandinApiServer

REPO = Path(__file__).resolve().parents[2]
SETTINGS = OperatorSettings()


@pytest.fixture(scope="module")
def server() -> Iterator[StandinApiServer]:
    with StandinApiServer(crd_paths=[REPO / "crds"]) as running:
        yield running


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def cascade_body(server: StandinApiServer, name: str) -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "chat-vllm-gpu.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": "default"}
    return server.create(body)


async def observe(api: KubeApi, name: str) -> dict:
    selector = selector_string(owned_selector(name))
    objects = []
    for kind in CHILD_KINDS:
        objects += await api.list(
            kind.api_version, kind.plural, namespace="default", label_selector=selector, kind=kind.kind
        )
    return index_children(objects)


def desired_children(body: dict[str, Any]) -> list[dict[str, Any]]:
    children = build_children(parse_cascade(body), SETTINGS)
    kopf.append_owner_reference(children, owner=body)
    return children


def test_paths_follow_the_api_layout():
    assert resource_path("v1", "configmaps", namespace="ns", name="a") == "/api/v1/namespaces/ns/configmaps/a"
    assert resource_path("apps/v1", "deployments", namespace="ns") == "/apis/apps/v1/namespaces/ns/deployments"
    assert resource_path("v1", "nodes") == "/api/v1/nodes"
    assert (
        resource_path("kascade.dev/v1alpha1", "modelcascades", namespace="n", name="x", subresource="status")
        == "/apis/kascade.dev/v1alpha1/namespaces/n/modelcascades/x/status"
    )


@pytest.mark.slow  # the API-server stand-in
def test_credentials_come_from_the_kubeconfig_named_at_call_time(server: StandinApiServer, credentials: Credentials):
    assert credentials.host == server.url
    assert credentials.headers == {"Authorization": "Bearer kascade-standin-token"}
    assert credentials.ssl is False


@pytest.mark.slow  # the API-server stand-in
def test_apply_creates_then_replaces_so_removed_fields_go_away(server: StandinApiServer, credentials: Credentials):
    body = cascade_body(server, "apply-a")

    async def scenario() -> None:
        async with KubeApi(credentials) as api:
            desired = desired_children(body)
            plan = plan_children(desired, await observe(api, "apply-a"), cascade=label_value("apply-a"))
            report = await apply_plan(api, plan, {}, namespace="default")
            assert not report.failures and len(report.created) == len(desired) == 17  # with the runs' identity
            observed = await observe(api, "apply-a")
            assert plan_children(desired, observed, cascade=label_value("apply-a")).empty

            # The tier loses its own toleration: a merge patch would keep it, a replace drops it.
            changed = copy.deepcopy(body)
            changed["spec"]["tiers"][0]["tolerations"] = []
            desired = desired_children(changed)
            plan = plan_children(desired, observed, cascade=label_value("apply-a"))
            assert [(m["kind"], m["metadata"]["name"]) for m in plan.patch] == [("Deployment", "apply-a-small")]
            report = await apply_plan(api, plan, observed, namespace="default")
            assert report.replaced == [("Deployment", "apply-a-small")] and not report.failures

    run(scenario())
    stored = server.get("deployments", "apply-a-small", "default")
    assert stored["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert stored["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]


def test_a_replace_keeps_what_other_controllers_and_users_added():
    desired = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "x",
            "labels": {"app.kubernetes.io/name": "kascade"},
            "annotations": {"kascade.dev/spec-hash": "new"},
            "ownerReferences": [{"uid": "owner", "kind": "ModelCascade", "name": "c", "apiVersion": "v"}],
        },
        "data": {"a": "1"},
    }
    observed = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "x",
            "resourceVersion": "42",
            "finalizers": ["example.com/keep"],
            "labels": {"app.kubernetes.io/name": "kascade", "app.kubernetes.io/old": "gone", "team": "ml"},
            "annotations": {
                "kascade.dev/spec-hash": "old",
                "kascade.dev/stale": "gone",
                "deployment.kubernetes.io/revision": "3",
            },
            "ownerReferences": [
                {"uid": "owner", "kind": "ModelCascade", "name": "c", "apiVersion": "v"},
                {"uid": "other", "kind": "Thing", "name": "t", "apiVersion": "v"},
            ],
        },
        "data": {"a": "0", "b": "removed"},
    }
    body = replacement(desired, observed)
    assert body["metadata"]["resourceVersion"] == "42"
    assert body["metadata"]["labels"] == {"team": "ml", "app.kubernetes.io/name": "kascade"}
    assert body["metadata"]["annotations"] == {"deployment.kubernetes.io/revision": "3", "kascade.dev/spec-hash": "new"}
    assert body["metadata"]["finalizers"] == ["example.com/keep"]
    assert [ref["uid"] for ref in body["metadata"]["ownerReferences"]] == ["other", "owner"]
    assert body["data"] == {"a": "1"}
    assert desired["metadata"]["annotations"] == {"kascade.dev/spec-hash": "new"}  # not changed in place


@pytest.mark.slow  # the API-server stand-in
def test_a_stale_observation_is_a_race_not_a_failure(server: StandinApiServer, credentials: Credentials):
    body = cascade_body(server, "race-a")

    async def scenario() -> None:
        async with KubeApi(credentials) as api:
            desired = desired_children(body)
            await apply_plan(api, plan_children(desired, {}, cascade=label_value("race-a")), {}, namespace="default")
            observed = await observe(api, "race-a")
            # Someone else writes the ConfigMap after we looked: our replace carries a stale resourceVersion.
            server.patch(
                "configmaps", "race-a-router", {"metadata": {"labels": {"touched": "yes"}}}, namespace="default"
            )
            changed = copy.deepcopy(body)
            changed["spec"]["router"]["timeoutSeconds"] = 30
            plan = plan_children(desired_children(changed), observed, cascade=label_value("race-a"))
            report = await apply_plan(api, plan, observed, namespace="default")
            assert report.stale and not report.failures
            assert ("ConfigMap", "race-a-router") not in report.replaced
            # Creating what exists already (another reconcile won) is a race too.
            again = await apply_plan(
                api, plan_children(desired, {}, cascade=label_value("race-a")), {}, namespace="default"
            )
            assert again.stale and not again.failures and not again.created

    run(scenario())


@pytest.mark.slow  # the API-server stand-in
def test_refused_writes_are_failures_with_the_servers_reason(server: StandinApiServer, credentials: Credentials):
    body = cascade_body(server, "refused-a")

    async def scenario() -> None:
        async with KubeApi(credentials) as api:
            desired = desired_children(body)
            broken = next(m for m in desired if m["kind"] == "Deployment")
            broken["spec"]["template"]["metadata"]["labels"] = {"unrelated": "labels"}  # selector does not match
            report = await apply_plan(
                api, plan_children(desired, {}, cascade=label_value("refused-a")), {}, namespace="default"
            )
            assert len(report.failures) == 1
            assert report.failures[0].startswith("create Deployment/refused-a-small failed: HTTP 422 Invalid:")
            assert len(report.created) == len(desired) - 1

    run(scenario())


@pytest.mark.slow  # the API-server stand-in
def test_delete_and_list_pages(server: StandinApiServer, credentials: Credentials, monkeypatch: pytest.MonkeyPatch):
    for index in range(5):
        server.create(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"page-{index}", "labels": {"paged": "yes"}}}
        )
    monkeypatch.setattr(kube_api, "_LIST_PAGE_SIZE", 2)

    async def scenario() -> None:
        async with KubeApi(credentials) as api:
            listed = await api.list("v1", "configmaps", namespace="default", label_selector="paged=yes")
            assert [obj["metadata"]["name"] for obj in listed] == [f"page-{i}" for i in range(5)]
            assert all(obj["kind"] == "ConfigMap" and obj["apiVersion"] == "v1" for obj in listed)
            assert await api.delete("v1", "configmaps", "page-0", namespace="default") is True
            assert await api.delete("v1", "configmaps", "page-0", namespace="default") is False
            assert await api.get("v1", "configmaps", "page-0", namespace="default") is None
            with pytest.raises(ApiError) as refused:
                await api.create(
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": "Not A Name", "namespace": "default"},
                    }
                )
            assert refused.value.status == 422 and refused.value.reason == "Invalid"

    run(scenario())
    assert [
        r.query.get("limit")
        for r in server.requests
        if r.verb == "list" and r.query.get("labelSelector") == "paged=yes"
    ] == ["2"] * 3


@pytest.mark.slow  # the API-server stand-in
def test_status_patches_are_preconditioned_on_the_resource_version(server: StandinApiServer, credentials: Credentials):
    body = cascade_body(server, "status-a")

    async def scenario() -> None:
        async with KubeApi(credentials) as api:
            version = body["metadata"]["resourceVersion"]
            written = await api.patch_status(
                "kascade.dev/v1alpha1",
                "modelcascades",
                "status-a",
                namespace="default",
                status_patch={"endpoint": "http://x"},
                resource_version=version,
            )
            assert written["status"]["endpoint"] == "http://x"
            with pytest.raises(ApiError) as stale:
                await api.patch_status(
                    "kascade.dev/v1alpha1",
                    "modelcascades",
                    "status-a",
                    namespace="default",
                    status_patch={"endpoint": "http://y"},
                    resource_version=version,
                )
            assert stale.value.conflict

    run(scenario())
    assert server.get("modelcascades", "status-a", "default")["status"]["endpoint"] == "http://x"


def test_the_rbac_rules_name_verbs_per_resource():
    assert rule_allows(OPERATOR_RULES, verb="patch", group="kascade.dev", resource="modelcascades/status")
    assert rule_allows(OPERATOR_RULES, verb="get", group="kascade.dev", resource="modelcascades/status")
    assert rule_allows(OPERATOR_RULES, verb="update", group="apps", resource="deployments")
    assert not rule_allows(OPERATOR_RULES, verb="list", group="", resource="secrets")  # get only: values unread
    assert not rule_allows(OPERATOR_RULES, verb="patch", group="apps", resource="deployments")
