"""Finalizers, owner-reference garbage collection and namespace deletion, as on a real cluster."""

from __future__ import annotations

import httpx
import pytest

from kascade.testing import StandinApiServer

pytestmark = pytest.mark.slow  # the API-server stand-in on loopback

MC = "/apis/kascade.dev/v1alpha1/namespaces/default/modelcascades"
CM = "/api/v1/namespaces/default/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}


def cascade(name: str, **metadata: object) -> dict:
    return {
        "apiVersion": "kascade.dev/v1alpha1",
        "kind": "ModelCascade",
        "metadata": {"name": name, **metadata},
        "spec": {"tiers": [{"name": "only", "model": {"uri": "hf://org/model"}}]},
    }


def owned_configmap(name: str, owner: dict, *, namespace: str = "default") -> dict:
    """What `kopf.adopt(child, owner=body)` adds: an owner reference with the owner's uid, controller: true."""
    ref = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {"metadata": {"name": name, "namespace": namespace, "ownerReferences": [ref]}, "data": {"k": "v"}}


def test_deleting_an_owner_deletes_its_dependents(server: StandinApiServer, api: httpx.Client):
    """A real cluster's garbage collector deletes the dependents of a deleted owner (background propagation)."""
    owner = api.post(MC, json=cascade("gc-owner")).json()
    assert api.post(CM, json=owned_configmap("gc-child-1", owner)).status_code == 201
    assert api.post(CM, json=owned_configmap("gc-child-2", owner)).status_code == 201
    assert api.delete(f"{MC}/gc-owner").status_code == 200
    server.wait_for(
        lambda: server.get("configmaps", "gc-child-1") is None and server.get("configmaps", "gc-child-2") is None
    )


def test_orphan_propagation_keeps_dependents(server: StandinApiServer, api: httpx.Client):
    """A real cluster keeps the dependents of an owner deleted with propagationPolicy=Orphan, minus the owner reference."""
    owner = api.post(MC, json=cascade("gc-orphaner")).json()
    api.post(CM, json=owned_configmap("gc-orphan", owner))
    api.request("DELETE", f"{MC}/gc-orphaner", json={"propagationPolicy": "Orphan"})
    server.wait_for(lambda: server.get("mcas", "gc-orphaner") is None)
    orphan = server.get("configmaps", "gc-orphan")
    assert orphan is not None and "ownerReferences" not in orphan["metadata"]


def test_foreground_propagation_deletes_dependents_first(server: StandinApiServer, api: httpx.Client):
    """A real cluster deletes an owner with propagationPolicy=Foreground only after its dependents are gone."""
    owner = api.post(MC, json=cascade("gc-foreground")).json()
    api.post(CM, json=owned_configmap("gc-fg-child", owner))
    response = api.request("DELETE", f"{MC}/gc-foreground", json={"propagationPolicy": "Foreground"})
    assert response.json()["metadata"]["deletionTimestamp"]
    assert "foregroundDeletion" in response.json()["metadata"]["finalizers"]
    server.wait_for(
        lambda: server.get("mcas", "gc-foreground") is None and server.get("configmaps", "gc-fg-child") is None
    )


def test_a_dependent_of_a_missing_owner_is_collected(server: StandinApiServer, api: httpx.Client):
    """A real cluster's garbage collector deletes an object whose owner (by uid) does not exist."""
    ghost = cascade("ghost")
    ghost["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000"
    assert api.post(CM, json=owned_configmap("gc-dangling", ghost)).status_code == 201
    server.wait_for(lambda: server.get("configmaps", "gc-dangling") is None)


def test_an_owner_with_the_same_name_but_another_uid_does_not_count(server: StandinApiServer, api: httpx.Client):
    """A real cluster matches owners by uid: an object of the owner's name but another uid does not keep a dependent alive."""
    api.post(MC, json=cascade("gc-same-name"))
    impostor = cascade("gc-same-name")
    impostor["metadata"]["uid"] = "11111111-1111-1111-1111-111111111111"  # e.g. the uid of a deleted, re-created owner
    api.post(CM, json=owned_configmap("gc-stale-child", impostor))
    server.wait_for(lambda: server.get("configmaps", "gc-stale-child") is None)
    assert server.get("mcas", "gc-same-name") is not None


def test_finalizers_hold_deletion_until_removed(server: StandinApiServer, api: httpx.Client):
    """A real API server marks an object with finalizers as deleting (deletionTimestamp) and deletes it when the last finalizer goes."""
    api.post(MC, json=cascade("fin", finalizers=["kascade.dev/cleanup"]))
    deleting = api.delete(f"{MC}/fin").json()
    assert deleting["metadata"]["deletionTimestamp"] and deleting["metadata"]["generation"] == 2
    assert api.get(f"{MC}/fin").status_code == 200
    again = api.delete(f"{MC}/fin").json()
    assert again["metadata"]["resourceVersion"] == deleting["metadata"]["resourceVersion"]  # nothing more to do
    api.patch(f"{MC}/fin", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert api.get(f"{MC}/fin").status_code == 404


def test_no_new_finalizers_on_a_deleting_object(api: httpx.Client):
    """A real API server refuses adding finalizers to an object being deleted (422 Forbidden)."""
    api.post(MC, json=cascade("fin-add", finalizers=["kascade.dev/a"]))
    api.delete(f"{MC}/fin-add")
    response = api.patch(
        f"{MC}/fin-add", json={"metadata": {"finalizers": ["kascade.dev/a", "kascade.dev/b"]}}, headers=MERGE
    )
    assert response.status_code == 422
    api.patch(f"{MC}/fin-add", json={"metadata": {"finalizers": None}}, headers=MERGE)


def test_deleting_a_built_in_object_answers_a_success_status(api: httpx.Client):
    """A real API server answers the deletion of a ConfigMap with a Status of status Success."""
    api.post(CM, json={"metadata": {"name": "del-status"}})
    body = api.delete(f"{CM}/del-status").json()
    assert body["kind"] == "Status" and body["status"] == "Success" and body["details"]["name"] == "del-status"


def test_deleting_a_namespace_deletes_its_contents(server: StandinApiServer, api: httpx.Client):
    """A real API server marks a deleted Namespace Terminating, deletes what it holds, then the Namespace itself."""
    api.post("/api/v1/namespaces", json={"metadata": {"name": "doomed"}})
    api.post("/api/v1/namespaces/doomed/configmaps", json={"metadata": {"name": "inside"}})
    terminating = api.delete("/api/v1/namespaces/doomed").json()
    assert terminating["status"]["phase"] == "Terminating"
    server.wait_for(lambda: server.get("namespaces", "doomed") is None)
    assert server.objects("configmaps", namespace="doomed") == []


def test_creating_in_a_terminating_namespace_is_forbidden(api: httpx.Client):
    """A real API server answers 403 Forbidden for a create in a namespace that is being terminated."""
    api.post("/api/v1/namespaces", json={"metadata": {"name": "closing"}})
    api.post(
        "/api/v1/namespaces/closing/configmaps",
        json={"metadata": {"name": "blocker", "finalizers": ["kascade.dev/hold"]}},
    )
    api.delete("/api/v1/namespaces/closing")
    response = api.post("/api/v1/namespaces/closing/configmaps", json={"metadata": {"name": "late"}})
    assert response.status_code == 403 and response.json()["reason"] == "Forbidden"
    api.patch("/api/v1/namespaces/closing/configmaps/blocker", json={"metadata": {"finalizers": None}}, headers=MERGE)


def test_delete_collection_honours_the_label_selector(server: StandinApiServer, api: httpx.Client):
    """A real API server's DELETE on a collection deletes only what ?labelSelector= selects."""
    for name, group in (("dc-a", "x"), ("dc-b", "x"), ("dc-c", "y")):
        api.post(CM, json={"metadata": {"name": name, "labels": {"group": group}}})
    assert api.delete(CM, params={"labelSelector": "group=x"}).status_code == 200
    assert [cm["metadata"]["name"] for cm in server.objects("configmaps", label_selector="group")] == ["dc-c"]
