"""The Deployment controller stand-in, and CRDs created through the API, as on a real cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from kascade.testing import StandinApiServer

pytestmark = pytest.mark.slow  # the API-server stand-in on loopback

DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
MERGE = {"Content-Type": "application/merge-patch+json"}


def deployment(name: str, replicas: int = 2) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "engine", "image": "vllm/vllm-openai:v0.9.0"}]},
            },
        },
    }


@pytest.fixture(scope="module")
def server() -> Iterator[StandinApiServer]:
    with StandinApiServer(controller_delay=0.02) as running:
        yield running


def conditions(obj: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in obj.get("status", {}).get("conditions", [])}


def observed(server: StandinApiServer, name: str, generation: int) -> dict:
    return server.wait_for(
        lambda: (
            (d := server.get("deployments", name)) and d.get("status", {}).get("observedGeneration") == generation and d
        )
    )


def test_a_new_deployment_becomes_available(server: StandinApiServer, api: httpx.Client):
    """A real Deployment controller reports replicas, ready/available/updated replicas, observedGeneration, Available and Progressing."""
    api.post(DEPLOY, json=deployment("ctl-ready", replicas=3))
    status = observed(server, "ctl-ready", 1)["status"]
    assert (status["replicas"], status["readyReplicas"], status["availableReplicas"], status["updatedReplicas"]) == (
        3,
        3,
        3,
        3,
    )
    assert conditions({"status": status}) == {
        "Available": ("True", "MinimumReplicasAvailable"),
        "Progressing": ("True", "NewReplicaSetAvailable"),
    }


def test_observed_generation_follows_spec_changes(server: StandinApiServer, api: httpx.Client):
    """A real Deployment controller catches up: status.observedGeneration reaches the new generation after a spec change."""
    api.post(DEPLOY, json=deployment("ctl-gen"))
    observed(server, "ctl-gen", 1)
    api.patch(f"{DEPLOY}/ctl-gen", json={"spec": {"replicas": 4}}, headers=MERGE)
    assert observed(server, "ctl-gen", 2)["status"]["readyReplicas"] == 4


def test_a_held_deployment_stays_unready(server: StandinApiServer, api: httpx.Client):
    """A real Deployment whose pods never get ready reports Available False (MinimumReplicasUnavailable), Progressing True."""
    server.hold_unready("default", "ctl-held")
    api.post(DEPLOY, json=deployment("ctl-held"))
    status = observed(server, "ctl-held", 1)["status"]
    assert "readyReplicas" not in status and status["unavailableReplicas"] == 2
    assert conditions({"status": status}) == {
        "Available": ("False", "MinimumReplicasUnavailable"),
        "Progressing": ("True", "ReplicaSetUpdated"),
    }
    server.release("default", "ctl-held")
    server.wait_for(lambda: server.get("deployments", "ctl-held")["status"].get("readyReplicas") == 2)


def test_a_deployment_past_its_progress_deadline(server: StandinApiServer, api: httpx.Client):
    """A real Deployment that cannot progress reports Progressing False with reason ProgressDeadlineExceeded."""
    server.hold_unready("default", "ctl-stuck", ready_replicas=1, deadline_exceeded=True)
    api.post(DEPLOY, json=deployment("ctl-stuck"))
    status = observed(server, "ctl-stuck", 1)["status"]
    assert status["readyReplicas"] == 1
    assert conditions({"status": status})["Progressing"] == ("False", "ProgressDeadlineExceeded")


def test_status_writes_do_not_wake_the_controller_forever(server: StandinApiServer, api: httpx.Client):
    """A real controller writes status once per change: with nothing changing, the resourceVersion settles."""
    api.post(DEPLOY, json=deployment("ctl-settle"))
    settled = observed(server, "ctl-settle", 1)["metadata"]["resourceVersion"]
    time.sleep(0.2)
    assert server.get("deployments", "ctl-settle")["metadata"]["resourceVersion"] == settled


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.dev"},
    "spec": {
        "group": "example.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wg"]},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 1, "default": 1}},
                            },
                            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                        },
                    }
                },
            }
        ],
    },
}


def test_a_crd_created_through_the_api_is_served(server: StandinApiServer, api: httpx.Client):
    """A real API server starts serving a CRD's kind once it is created, marks it Established, and lists it in discovery."""
    assert api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=CRD).status_code == 201
    crd = server.wait_for(lambda: server.get("customresourcedefinitions", "widgets.example.dev"))
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
    resources = api.get("/apis/example.dev/v1").json()["resources"]
    assert [r["name"] for r in resources] == ["widgets"] and resources[0]["shortNames"] == ["wg"]
    widget = api.post(
        "/apis/example.dev/v1/namespaces/default/widgets",
        json={"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}},
    )
    assert widget.status_code == 201 and widget.json()["spec"] == {"size": 1}


def test_without_a_status_subresource_status_is_part_of_the_object(api: httpx.Client):
    """A real API server keeps status in main-resource writes when the CRD has no status subresource, and bumps generation."""
    api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=CRD)
    api.post(
        "/apis/example.dev/v1/namespaces/default/widgets",
        json={"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "plain"}, "spec": {}},
    )
    patched = api.patch(
        "/apis/example.dev/v1/namespaces/default/widgets/plain", json={"status": {"phase": "Done"}}, headers=MERGE
    ).json()
    assert patched["status"] == {"phase": "Done"} and patched["metadata"]["generation"] == 2
    assert api.get("/apis/example.dev/v1/namespaces/default/widgets/plain/status").status_code == 404


def test_deleting_a_crd_removes_its_kind_and_objects(server: StandinApiServer, api: httpx.Client):
    """A real API server stops serving a CRD's kind, and drops its objects (watchers see them DELETED), when the CRD is deleted."""
    api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=CRD)
    api.post(
        "/apis/example.dev/v1/namespaces/default/widgets",
        json={"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "doomed"}, "spec": {}},
    )
    since = server.resource_version
    api.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.dev")
    deleted = [
        (change.type, change.new["metadata"]["name"])
        for change in server.changes(since=since)
        if change.kind.plural == "widgets"
    ]
    assert ("DELETED", "doomed") in deleted
    server.wait_for(lambda: api.get("/apis/example.dev/v1/namespaces/default/widgets").status_code == 404)
    assert api.get("/apis/example.dev/v1").status_code == 404


def test_a_crd_name_must_match_its_names(api: httpx.Client):
    """A real API server refuses a CRD whose metadata.name is not <plural>.<group> (422)."""
    bad = {**CRD, "metadata": {"name": "gadgets.example.dev"}}
    assert api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=bad).status_code == 422
