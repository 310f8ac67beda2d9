"""The stand-in sets and checks object metadata as a real API server does."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

pytestmark = pytest.mark.slow  # the API-server stand-in on loopback

MC = "/apis/kascade.dev/v1alpha1/namespaces/default/modelcascades"
CM = "/api/v1/namespaces/default/configmaps"


def cascade(name: str | None = None, **metadata: object) -> dict:
    meta = {"name": name, **metadata} if name else dict(metadata)
    return {
        "apiVersion": "kascade.dev/v1alpha1",
        "kind": "ModelCascade",
        "metadata": meta,
        "spec": {
            "tiers": [
                {"name": "small", "model": {"uri": "hf://org/small"}, "accept": {"threshold": 0.5}},
                {"name": "large", "model": {"uri": "hf://org/large"}},
            ]
        },
    }


def test_create_answers_201_with_server_set_metadata(api: httpx.Client):
    """A real API server answers a create with 201 Created and sets uid, resourceVersion, creationTimestamp, generation 1."""
    response = api.post(MC, json=cascade("meta-create"))
    assert response.status_code == 201
    meta = response.json()["metadata"]
    uuid.UUID(meta["uid"])
    assert isinstance(meta["resourceVersion"], str) and meta["resourceVersion"].isdigit()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert meta["generation"] == 1


def test_server_owned_fields_in_the_body_are_replaced(api: httpx.Client):
    """A real API server ignores a client's uid, generation and creationTimestamp on create and sets its own."""
    body = cascade("meta-owned", uid="not-a-uid", generation=7, creationTimestamp="2000-01-01T00:00:00Z")
    meta = api.post(MC, json=body).json()["metadata"]
    assert meta["uid"] != "not-a-uid" and meta["generation"] == 1 and not meta["creationTimestamp"].startswith("2000")


def test_resource_versions_come_from_one_global_counter(api: httpx.Client):
    """A real API server's resourceVersions come from one etcd revision shared by all kinds: they only grow."""
    first = int(api.post(MC, json=cascade("meta-rv-1")).json()["metadata"]["resourceVersion"])
    second = int(api.post(CM, json={"metadata": {"name": "meta-rv-2"}}).json()["metadata"]["resourceVersion"])
    third = int(api.post(MC, json=cascade("meta-rv-3")).json()["metadata"]["resourceVersion"])
    assert first < second < third
    listed = api.get(MC).json()["metadata"]["resourceVersion"]
    assert int(listed) >= third


def test_a_resource_version_in_a_create_is_a_bad_request(api: httpx.Client):
    """A real API server answers 400 BadRequest: "resourceVersion should not be set on objects to be created"."""
    response = api.post(MC, json=cascade("meta-create-rv", resourceVersion="12"))
    assert response.status_code == 400
    assert response.json()["reason"] == "BadRequest"


def test_namespace_comes_from_the_url(api: httpx.Client):
    """A real API server fills metadata.namespace from the URL when the body has none."""
    obj = api.post(MC, json=cascade("meta-ns")).json()
    assert obj["metadata"]["namespace"] == "default"


def test_a_body_namespace_that_disagrees_with_the_url_is_a_bad_request(api: httpx.Client):
    """A real API server answers 400 BadRequest when the body's namespace differs from the URL's."""
    response = api.post(MC, json=cascade("meta-ns-mismatch", namespace="elsewhere"))
    assert response.status_code == 400
    assert response.json()["kind"] == "Status" and response.json()["reason"] == "BadRequest"
    assert "does not match the namespace" in response.json()["message"]


def test_creating_in_a_missing_namespace_is_not_found(api: httpx.Client):
    """A real API server answers 404 NotFound `namespaces "x" not found` for a create in a missing namespace."""
    response = api.post("/apis/kascade.dev/v1alpha1/namespaces/nowhere/modelcascades", json=cascade("meta-nowhere"))
    assert response.status_code == 404
    assert response.json()["message"] == 'namespaces "nowhere" not found'


def test_generate_name_gives_a_unique_name(api: httpx.Client):
    """A real API server appends 5 random characters to metadata.generateName when no name is given."""
    names = {api.post(CM, json={"metadata": {"generateName": "gen-"}}).json()["metadata"]["name"] for _ in range(5)}
    assert len(names) == 5
    assert all(re.fullmatch(r"gen-[bcdfghjklmnpqrstvwxz2456789]{5}", name) for name in names)


def test_no_name_and_no_generate_name_is_invalid(api: httpx.Client):
    """A real API server answers 422 Invalid: "metadata.name: Required value: name or generateName is required"."""
    response = api.post(CM, json={"metadata": {}})
    assert response.status_code == 422
    causes = response.json()["details"]["causes"]
    assert causes[0]["field"] == "metadata.name" and causes[0]["reason"] == "FieldValueRequired"


def test_a_duplicate_name_is_already_exists(api: httpx.Client):
    """A real API server answers 409 with a Status of reason AlreadyExists for a duplicate name."""
    assert api.post(MC, json=cascade("meta-dup")).status_code == 201
    response = api.post(MC, json=cascade("meta-dup"))
    assert response.status_code == 409
    status = response.json()
    assert status["kind"] == "Status" and status["status"] == "Failure" and status["reason"] == "AlreadyExists"
    assert status["message"] == 'modelcascades.kascade.dev "meta-dup" already exists'
    assert status["details"] == {"name": "meta-dup", "group": "kascade.dev", "kind": "modelcascades"}


def test_a_missing_object_is_not_found(api: httpx.Client):
    """A real API server answers 404 with a Status of reason NotFound naming the resource."""
    response = api.get(f"{MC}/absent")
    assert response.status_code == 404
    status = response.json()
    assert status["reason"] == "NotFound" and status["code"] == 404
    assert status["message"] == 'modelcascades.kascade.dev "absent" not found'


def test_an_unknown_resource_is_not_found(api: httpx.Client):
    """A real API server answers 404 NotFound for a resource it does not serve."""
    response = api.get("/apis/kascade.dev/v1alpha1/namespaces/default/nothings")
    assert response.status_code == 404 and response.json()["reason"] == "NotFound"


def test_a_wrong_kind_in_the_body_is_a_bad_request(api: httpx.Client):
    """A real API server answers 400 BadRequest when the body's apiVersion/kind does not match the URL."""
    response = api.post(CM, json={"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "meta-wrong-kind"}})
    assert response.status_code == 400


def test_generation_bumps_on_spec_changes_only(api: httpx.Client):
    """A real API server bumps metadata.generation when the spec changes, not on metadata or status writes."""
    created = api.post(MC, json=cascade("meta-gen")).json()
    assert created["metadata"]["generation"] == 1
    labelled = api.patch(
        f"{MC}/meta-gen",
        json={"metadata": {"labels": {"team": "ml"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    ).json()
    assert labelled["metadata"]["generation"] == 1
    status = api.patch(
        f"{MC}/meta-gen/status",
        json={"status": {"endpoint": "http://x"}},
        headers={"Content-Type": "application/merge-patch+json"},
    ).json()
    assert status["metadata"]["generation"] == 1
    changed = api.patch(
        f"{MC}/meta-gen",
        json={"spec": {"task": "completion"}},
        headers={"Content-Type": "application/merge-patch+json"},
    ).json()
    assert changed["metadata"]["generation"] == 2


def test_deployment_generation_bumps_on_annotation_changes(api: httpx.Client):
    """A real API server bumps a Deployment's generation on spec and on annotation changes (copied to ReplicaSets), not labels."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "meta-deploy-gen"},
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "template": {
                "metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "c", "image": "img:1"}]},
            },
        },
    }
    path = "/apis/apps/v1/namespaces/default/deployments"
    assert api.post(path, json=deployment).json()["metadata"]["generation"] == 1
    merge = {"Content-Type": "application/merge-patch+json"}
    assert (
        api.patch(f"{path}/meta-deploy-gen", json={"metadata": {"labels": {"a": "b"}}}, headers=merge).json()[
            "metadata"
        ]["generation"]
        == 1
    )
    assert (
        api.patch(f"{path}/meta-deploy-gen", json={"metadata": {"annotations": {"a": "b"}}}, headers=merge).json()[
            "metadata"
        ]["generation"]
        == 2
    )


def test_configmaps_have_no_generation(api: httpx.Client):
    """A real API server keeps no metadata.generation for ConfigMaps."""
    assert "generation" not in api.post(CM, json={"metadata": {"name": "meta-nogen"}}).json()["metadata"]


def test_cluster_scoped_objects_have_no_namespace(api: httpx.Client):
    """A real API server drops metadata.namespace from cluster-scoped objects such as Nodes."""
    node = api.post("/api/v1/nodes", json={"metadata": {"name": "meta-node", "namespace": "default"}}).json()
    assert "namespace" not in node["metadata"]


def test_namespaces_get_their_name_label(api: httpx.Client):
    """A real API server labels every Namespace with kubernetes.io/metadata.name."""
    ns = api.post("/api/v1/namespaces", json={"metadata": {"name": "meta-labelled"}}).json()
    assert ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == "meta-labelled"
    assert ns["status"] == {"phase": "Active"}
