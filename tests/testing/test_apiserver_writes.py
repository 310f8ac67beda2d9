"""PUT, the patch types, optimistic concurrency and the status subresource, as on a real API server."""

from __future__ import annotations

import httpx
import pytest

from kascade.testing import StandinApiServer

pytestmark = pytest.mark.slow  # the API-server stand-in on loopback

MC = "/apis/kascade.dev/v1alpha1/namespaces/default/modelcascades"
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
CM = "/api/v1/namespaces/default/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
STRATEGIC = {"Content-Type": "application/strategic-merge-patch+json"}


def cascade(name: str) -> dict:
    return {
        "apiVersion": "kascade.dev/v1alpha1",
        "kind": "ModelCascade",
        "metadata": {"name": name},
        "spec": {
            "tiers": [
                {"name": "small", "model": {"uri": "hf://org/small"}, "accept": {"threshold": 0.5}},
                {"name": "large", "model": {"uri": "hf://org/large"}},
            ]
        },
    }


def deployment(name: str) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "engine",
                            "image": "vllm/vllm-openai:v0.9.0",
                            "ports": [{"containerPort": 8000}],
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        },
                        {"name": "sidecar", "image": "busybox:1.36"},
                    ],
                    "volumes": [{"name": "cache", "emptyDir": {}}],
                },
            },
        },
    }


# --- PUT and optimistic concurrency ----------------------------------------------------------


def test_put_replaces_the_object(api: httpx.Client):
    """A real API server replaces the object on PUT with the current resourceVersion and answers 200."""
    created = api.post(MC, json=cascade("put-ok")).json()
    created["spec"]["task"] = "completion"
    response = api.put(f"{MC}/put-ok", json=created)
    assert response.status_code == 200
    assert response.json()["spec"]["task"] == "completion"
    assert int(response.json()["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])


def test_put_with_a_stale_resource_version_is_a_conflict(api: httpx.Client):
    """A real API server answers 409 Conflict (reason Conflict, "the object has been modified") to a stale PUT."""
    created = api.post(MC, json=cascade("put-stale")).json()
    api.patch(f"{MC}/put-stale", json={"metadata": {"labels": {"x": "y"}}}, headers=MERGE)
    created["spec"]["task"] = "completion"
    response = api.put(f"{MC}/put-stale", json=created)
    assert response.status_code == 409
    assert response.json()["reason"] == "Conflict"
    assert "the object has been modified" in response.json()["message"]


def test_put_of_a_custom_resource_needs_a_resource_version(api: httpx.Client):
    """A real API server refuses an unconditional update of a custom resource: 422 metadata.resourceVersion must be specified."""
    api.post(MC, json=cascade("put-unconditional"))
    response = api.put(f"{MC}/put-unconditional", json=cascade("put-unconditional"))
    assert response.status_code == 422
    assert response.json()["details"]["causes"][0]["field"] == "metadata.resourceVersion"


def test_put_of_a_built_in_kind_may_be_unconditional(api: httpx.Client):
    """A real API server allows a PUT without resourceVersion for built-in kinds such as ConfigMaps."""
    api.post(CM, json={"metadata": {"name": "put-cm"}, "data": {"a": "1"}})
    response = api.put(f"{CM}/put-cm", json={"metadata": {"name": "put-cm"}, "data": {"a": "2"}})
    assert response.status_code == 200 and response.json()["data"] == {"a": "2"}


def test_put_to_a_missing_object_is_not_found(api: httpx.Client):
    """A real API server answers 404 NotFound to a PUT of an object that does not exist (no create-on-update)."""
    assert api.put(f"{CM}/put-missing", json={"metadata": {"name": "put-missing"}}).status_code == 404


def test_put_with_a_different_name_is_a_bad_request(api: httpx.Client):
    """A real API server answers 400 BadRequest when the body's name differs from the URL's."""
    api.post(CM, json={"metadata": {"name": "put-named"}})
    assert api.put(f"{CM}/put-named", json={"metadata": {"name": "other"}}).status_code == 400


def test_a_patch_with_a_stale_resource_version_is_a_conflict(api: httpx.Client):
    """A real API server answers 409 Conflict to a patch carrying a stale metadata.resourceVersion."""
    created = api.post(MC, json=cascade("patch-stale")).json()
    api.patch(f"{MC}/patch-stale", json={"metadata": {"labels": {"x": "y"}}}, headers=MERGE)
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "spec": {"task": "completion"}}
    response = api.patch(f"{MC}/patch-stale", json=stale, headers=MERGE)
    assert response.status_code == 409 and response.json()["reason"] == "Conflict"


def test_delete_with_a_stale_precondition_is_a_conflict(api: httpx.Client):
    """A real API server answers 409 Conflict when DeleteOptions.preconditions.resourceVersion is stale."""
    created = api.post(CM, json={"metadata": {"name": "delete-stale"}}).json()
    api.patch(f"{CM}/delete-stale", json={"data": {"a": "1"}}, headers=MERGE)
    body = {"preconditions": {"resourceVersion": created["metadata"]["resourceVersion"]}}
    response = api.request("DELETE", f"{CM}/delete-stale", json=body)
    assert response.status_code == 409


# --- patch types ---------------------------------------------------------------------------------


def test_merge_patch_merges_maps_replaces_lists_and_deletes_nulls(api: httpx.Client):
    """A real API server applies application/merge-patch+json per RFC 7386."""
    api.post(CM, json={"metadata": {"name": "merge", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}})
    patched = api.patch(
        f"{CM}/merge", json={"metadata": {"labels": {"b": None, "c": "3"}}, "data": {"y": "2"}}, headers=MERGE
    ).json()
    assert patched["metadata"]["labels"] == {"a": "1", "c": "3"}
    assert patched["data"] == {"x": "1", "y": "2"}


def test_json_patch_applies_operations(api: httpx.Client):
    """A real API server applies application/json-patch+json (RFC 6902) operations in order."""
    api.post(MC, json=cascade("json-patch"))
    ops = [
        {"op": "replace", "path": "/spec/tiers/0/accept/threshold", "value": 0.7},
        {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}},
    ]
    patched = api.patch(f"{MC}/json-patch", json=ops, headers=JSON_PATCH).json()
    assert patched["spec"]["tiers"][0]["accept"]["threshold"] == 0.7 and patched["metadata"]["labels"] == {"a": "b"}


def test_a_failed_json_patch_test_is_unprocessable(api: httpx.Client):
    """A real API server answers 422 when a JSON patch `test` operation fails."""
    api.post(CM, json={"metadata": {"name": "json-test"}, "data": {"a": "1"}})
    response = api.patch(f"{CM}/json-test", json=[{"op": "test", "path": "/data/a", "value": "2"}], headers=JSON_PATCH)
    assert response.status_code == 422


def test_strategic_merge_patch_merges_containers_by_name(api: httpx.Client):
    """A real API server merges containers (by name), env (by name) and ports (by containerPort) in a strategic merge patch."""
    api.post(DEPLOY, json=deployment("smp"))
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "engine",
                            "image": "vllm/vllm-openai:v0.10.0",
                            "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
                            "ports": [{"containerPort": 9000}],
                        }
                    ]
                }
            }
        }
    }
    patched = api.patch(f"{DEPLOY}/smp", json=patch, headers=STRATEGIC).json()
    containers = {c["name"]: c for c in patched["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"engine", "sidecar"}
    assert containers["engine"]["image"] == "vllm/vllm-openai:v0.10.0"
    assert [(e["name"], e["value"]) for e in containers["engine"]["env"]] == [("A", "1"), ("B", "3"), ("C", "4")]
    assert [p["containerPort"] for p in containers["engine"]["ports"]] == [8000, 9000]


def test_strategic_merge_patch_directives(api: httpx.Client):
    """A real API server honours `$patch: delete` in merged lists and `$patch: replace` on maps."""
    api.post(DEPLOY, json=deployment("smp-directives"))
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"name": "sidecar", "$patch": "delete"}],
                    "nodeSelector": {"$patch": "replace", "gpu": "a100"},
                }
            }
        }
    }
    patched = api.patch(f"{DEPLOY}/smp-directives", json=patch, headers=STRATEGIC).json()
    spec = patched["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["engine"]
    assert spec["nodeSelector"] == {"gpu": "a100"}


def test_strategic_merge_patch_replaces_atomic_lists(api: httpx.Client):
    """A real API server replaces lists without a merge strategy (tolerations, args) in a strategic merge patch."""
    api.post(DEPLOY, json=deployment("smp-atomic"))
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    api.patch(
        f"{DEPLOY}/smp-atomic", json={"spec": {"template": {"spec": {"tolerations": tolerations}}}}, headers=STRATEGIC
    )
    other = [{"key": "dedicated", "operator": "Exists"}]
    patched = api.patch(
        f"{DEPLOY}/smp-atomic", json={"spec": {"template": {"spec": {"tolerations": other}}}}, headers=STRATEGIC
    ).json()
    assert patched["spec"]["template"]["spec"]["tolerations"] == other


def test_strategic_merge_patch_of_a_custom_resource_is_unsupported(api: httpx.Client):
    """A real API server answers 415 UnsupportedMediaType to a strategic merge patch of a custom resource."""
    api.post(MC, json=cascade("smp-cr"))
    response = api.patch(f"{MC}/smp-cr", json={"spec": {"task": "completion"}}, headers=STRATEGIC)
    assert response.status_code == 415 and response.json()["reason"] == "UnsupportedMediaType"


def test_an_unknown_patch_content_type_is_unsupported(api: httpx.Client):
    """A real API server answers 415 to a PATCH whose Content-Type is not a patch type."""
    api.post(CM, json={"metadata": {"name": "patch-plain-json"}})
    response = api.patch(
        f"{CM}/patch-plain-json", json={"data": {"a": "1"}}, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 415


def test_server_side_apply_creates_and_merges(api: httpx.Client):
    """A real API server creates on the first apply patch (201), merges later ones, and requires ?fieldManager=."""
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: '1'\n"
    apply = {"Content-Type": "application/apply-patch+yaml"}
    assert api.patch(f"{CM}/ssa", content=manifest, headers=apply).status_code == 400  # no fieldManager
    created = api.patch(f"{CM}/ssa", params={"fieldManager": "test"}, content=manifest, headers=apply)
    assert created.status_code == 201
    updated = api.patch(
        f"{CM}/ssa", params={"fieldManager": "test"}, content=manifest.replace("'1'", "'2'"), headers=apply
    )
    assert updated.status_code == 200 and updated.json()["data"] == {"a": "2"}


def test_server_side_apply_matches_list_items_by_defaulted_keys(api: httpx.Client):
    """A real server's apply merges container ports by (containerPort, protocol), protocol defaulting to TCP: no duplicates."""
    manifest = deployment("ssa-ports")
    apply = {"Content-Type": "application/apply-patch+yaml"}
    params = {"fieldManager": "test"}
    assert api.patch(f"{DEPLOY}/ssa-ports", params=params, json=manifest, headers=apply).status_code == 201
    manifest["spec"]["template"]["spec"]["containers"][0]["image"] = "vllm/vllm-openai:v0.10.0"
    updated = api.patch(f"{DEPLOY}/ssa-ports", params=params, json=manifest, headers=apply)
    assert updated.status_code == 200, updated.text
    engine = updated.json()["spec"]["template"]["spec"]["containers"][0]
    assert engine["image"] == "vllm/vllm-openai:v0.10.0"
    assert engine["ports"] == [{"containerPort": 8000, "protocol": "TCP"}]


def test_the_scale_subresource(api: httpx.Client):
    """A real API server serves autoscaling/v1 Scale for Deployments; writing it changes spec.replicas."""
    api.post(DEPLOY, json=deployment("scaled"))
    scale = api.get(f"{DEPLOY}/scaled/scale").json()
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 1 and scale["status"]["selector"] == "app=scaled"
    patched = api.patch(f"{DEPLOY}/scaled/scale", json={"spec": {"replicas": 3}}, headers=MERGE)
    assert patched.status_code == 200 and patched.json()["spec"]["replicas"] == 3
    assert api.get(f"{DEPLOY}/scaled").json()["spec"]["replicas"] == 3


def test_a_no_op_write_changes_nothing(server: StandinApiServer, api: httpx.Client):
    """A real API server turns an update that changes nothing into a no-op: same resourceVersion, no watch event."""
    created = api.post(MC, json=cascade("noop")).json()
    before = server.resource_version
    same = api.patch(f"{MC}/noop", json={"spec": {"task": "chat"}}, headers=MERGE).json()  # already the default
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    put = api.put(f"{MC}/noop", json=same).json()
    assert put["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert [c for c in server.changes(since=before) if c.new["metadata"]["name"] == "noop"] == []


def test_dry_run_changes_nothing(server: StandinApiServer, api: httpx.Client):
    """A real API server validates and answers a ?dryRun=All write without persisting it."""
    response = api.post(CM, params={"dryRun": "All"}, json={"metadata": {"name": "dry"}})
    assert response.status_code == 201
    assert api.get(f"{CM}/dry").status_code == 404


# --- the status subresource ------------------------------------------------------------------------


def test_create_cannot_set_status_of_a_kind_with_a_status_subresource(api: httpx.Client):
    """A real API server drops status from a create when the kind has a status subresource."""
    body = cascade("status-create")
    body["status"] = {"endpoint": "http://forged"}
    assert "status" not in api.post(MC, json=body).json()


def test_writes_to_the_main_resource_ignore_status(api: httpx.Client):
    """A real API server ignores status in writes to the main resource of a kind with a status subresource."""
    api.post(MC, json=cascade("status-main"))
    api.patch(f"{MC}/status-main/status", json={"status": {"endpoint": "http://real"}}, headers=MERGE)
    patched = api.patch(
        f"{MC}/status-main",
        json={"status": {"endpoint": "http://forged"}, "metadata": {"labels": {"a": "b"}}},
        headers=MERGE,
    ).json()
    assert patched["status"]["endpoint"] == "http://real" and patched["metadata"]["labels"] == {"a": "b"}


def test_writes_to_status_ignore_everything_else(api: httpx.Client):
    """A real API server ignores spec and metadata changes in writes to /status."""
    api.post(MC, json=cascade("status-sub"))
    patch = {"spec": {"task": "completion"}, "metadata": {"labels": {"a": "b"}}, "status": {"endpoint": "http://x"}}
    patched = api.patch(f"{MC}/status-sub/status", json=patch, headers=MERGE).json()
    assert patched["status"]["endpoint"] == "http://x"
    assert patched["spec"]["task"] == "chat" and "labels" not in patched["metadata"]


def test_deployment_status_is_a_subresource(api: httpx.Client):
    """A real API server keeps a Deployment's status out of writes to the Deployment itself."""
    created = api.post(DEPLOY, json={**deployment("status-deploy"), "status": {"replicas": 99}}).json()
    assert created.get("status", {}).get("replicas") != 99
    patched = api.patch(f"{DEPLOY}/status-deploy", json={"status": {"replicas": 42}}, headers=MERGE).json()
    assert patched.get("status", {}).get("replicas") != 42
    patched = api.patch(
        f"{DEPLOY}/status-deploy/status", json={"status": {"replicas": 42}, "spec": {"replicas": 5}}, headers=MERGE
    ).json()
    assert patched["status"]["replicas"] == 42 and patched["spec"]["replicas"] == 1


def test_status_of_a_kind_without_the_subresource_is_not_found(api: httpx.Client):
    """A real API server answers 404 for /status of a kind that has no status subresource (ConfigMap)."""
    api.post(CM, json={"metadata": {"name": "no-status"}})
    assert api.patch(f"{CM}/no-status/status", json={"status": {}}, headers=MERGE).status_code == 404
