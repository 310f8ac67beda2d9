"""The official kubernetes client against the stand-in: typed models decode, errors arrive as ApiException."""

from __future__ import annotations

import json

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from kascade.testing import StandinApiServer

pytestmark = pytest.mark.slow  # the API-server stand-in on loopback

GROUP, VERSION, PLURAL = "kascade.dev", "v1alpha1", "modelcascades"


@pytest.fixture(scope="module")
def client(server: StandinApiServer) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(server.kubeconfig_path))


def cascade(name: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelCascade",
        "metadata": {"name": name, "labels": {"team": "ml"}},
        "spec": {"tiers": [{"name": "only", "model": {"uri": "hf://org/model"}}]},
    }


def test_custom_objects_round_trip(client: kubernetes.client.ApiClient):
    """The client's CustomObjectsApi creates, reads, lists by label and patches status through /status (merge patch)."""
    api = kubernetes.client.CustomObjectsApi(client)
    created = api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, cascade("client-cr"))
    assert created["metadata"]["generation"] == 1
    listed = api.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, label_selector="team=ml")
    assert [item["metadata"]["name"] for item in listed["items"]] == ["client-cr"]
    patched = api.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "client-cr", {"status": {"observedGeneration": 1}}
    )
    assert patched["status"]["observedGeneration"] == 1 and patched["metadata"]["generation"] == 1


def test_conflicts_surface_as_api_exceptions(client: kubernetes.client.ApiClient):
    """A real server's 409 reaches the client as ApiException(status=409) with a Status body of reason AlreadyExists."""
    api = kubernetes.client.CustomObjectsApi(client)
    api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, cascade("client-dup"))
    with pytest.raises(ApiException) as caught:
        api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, cascade("client-dup"))
    assert caught.value.status == 409 and json.loads(caught.value.body)["reason"] == "AlreadyExists"


def test_typed_deployments_decode(client: kubernetes.client.ApiClient, server: StandinApiServer):
    """AppsV1Api decodes the stand-in's Deployments into V1Deployment, defaults and controller status included."""
    apps = kubernetes.client.AppsV1Api(client)
    body = kubernetes.client.V1Deployment(
        metadata=kubernetes.client.V1ObjectMeta(name="client-deploy"),
        spec=kubernetes.client.V1DeploymentSpec(
            selector=kubernetes.client.V1LabelSelector(match_labels={"app": "x"}),
            template=kubernetes.client.V1PodTemplateSpec(
                metadata=kubernetes.client.V1ObjectMeta(labels={"app": "x"}),
                spec=kubernetes.client.V1PodSpec(containers=[kubernetes.client.V1Container(name="c", image="img:1")]),
            ),
        ),
    )
    created = apps.create_namespaced_deployment("default", body)
    assert created.spec.strategy.type == "RollingUpdate" and created.metadata.uid
    server.wait_for(lambda: apps.read_namespaced_deployment("client-deploy", "default").status.ready_replicas == 1)
    listed = apps.list_namespaced_deployment("default")
    assert [d.metadata.name for d in listed.items] == ["client-deploy"]


def test_the_client_watch_ends_with_the_server_timeout(client: kubernetes.client.ApiClient):
    """kubernetes.watch.Watch streams ADDED events and stops when the server ends the stream (timeoutSeconds)."""
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespaced_config_map("default", {"metadata": {"name": "client-watched", "labels": {"w": "1"}}})
    events = list(
        kubernetes.watch.Watch().stream(
            core.list_namespaced_config_map, "default", label_selector="w=1", timeout_seconds=1
        )
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "client-watched")]
