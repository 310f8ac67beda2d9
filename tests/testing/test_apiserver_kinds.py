"""Discovery, the kinds an operator touches, and server-side Tables, as a real API server serves them."""

from __future__ import annotations

import httpx
import pytest

from kascade.testing import StandinApiServer
from kascade.testing.tables import human_age, jsonpath

pytestmark = pytest.mark.slow  # the API-server stand-in on loopback

MC = "/apis/kascade.dev/v1alpha1/namespaces/default/modelcascades"
TABLE = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
MERGE = {"Content-Type": "application/merge-patch+json"}


def test_core_discovery_reports_group_version_v1(api: httpx.Client):
    """A real API server's /api/v1 APIResourceList has groupVersion "v1" (not "/v1"), which kubectl needs."""
    body = api.get("/api/v1").json()
    assert body["kind"] == "APIResourceList" and body["groupVersion"] == "v1"
    names = {resource["name"] for resource in body["resources"]}
    assert {
        "configmaps",
        "secrets",
        "services",
        "serviceaccounts",
        "nodes",
        "events",
        "namespaces",
        "namespaces/status",
    } <= names
    assert api.get("/api").json()["versions"] == ["v1"]


def test_group_discovery_lists_the_crd_and_its_subresource(api: httpx.Client):
    """A real API server lists a CRD's group in /apis and its resource, short names, categories and status subresource."""
    groups = {group["name"]: group for group in api.get("/apis").json()["groups"]}
    assert {"apps", "coordination.k8s.io", "apiextensions.k8s.io", "kascade.dev"} <= set(groups)
    assert groups["kascade.dev"]["preferredVersion"]["groupVersion"] == "kascade.dev/v1alpha1"
    resources = {r["name"]: r for r in api.get("/apis/kascade.dev/v1alpha1").json()["resources"]}
    assert resources["modelcascades"]["shortNames"] == ["mcas"] and resources["modelcascades"]["namespaced"] is True
    assert resources["modelcascades"]["kind"] == "ModelCascade" and "watch" in resources["modelcascades"]["verbs"]
    assert resources["modelcascades/status"]["verbs"] == ["get", "patch", "update"]
    assert api.get("/apis/kascade.dev").json()["kind"] == "APIGroup"


def test_crds_are_listable(api: httpx.Client):
    """A real API server lists CustomResourceDefinitions at apiextensions.k8s.io/v1, Established."""
    items = api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions").json()["items"]
    crd = next(item for item in items if item["metadata"]["name"] == "modelcascades.kascade.dev")
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"


def test_nodes_can_be_listed_by_label(server: StandinApiServer, api: httpx.Client):
    """A real API server lists Nodes (cluster-scoped) filtered by labels, e.g. the GPU product label."""
    server.add_node(
        "gpu-a100", labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, capacity={"nvidia.com/gpu": "8"}
    )
    server.add_node("gpu-t4", labels={"nvidia.com/gpu.product": "NVIDIA-T4"}, capacity={"nvidia.com/gpu": "1"})
    server.add_node("cpu-1")
    gpu_nodes = api.get("/api/v1/nodes", params={"labelSelector": "nvidia.com/gpu.product"}).json()["items"]
    assert sorted(node["metadata"]["name"] for node in gpu_nodes) == ["gpu-a100", "gpu-t4"]
    assert gpu_nodes[0]["status"]["allocatable"]["nvidia.com/gpu"] == "8"


def test_events_can_be_created(api: httpx.Client):
    """A real API server accepts core/v1 Events (as operators post them) and lists them by involvedObject."""
    event = {
        "metadata": {"generateName": "kascade-"},
        "type": "Normal",
        "reason": "Reconciled",
        "message": "ok",
        "involvedObject": {"kind": "ModelCascade", "name": "x", "namespace": "default"},
    }
    assert api.post("/api/v1/namespaces/default/events", json=event).status_code == 201
    listed = api.get("/api/v1/namespaces/default/events", params={"fieldSelector": "involvedObject.name=x"}).json()[
        "items"
    ]
    assert [e["reason"] for e in listed] == ["Reconciled"]


def test_leases_secrets_and_service_accounts_are_served(api: httpx.Client):
    """A real API server serves coordination.k8s.io/v1 Leases, Secrets and ServiceAccounts."""
    lease = {"metadata": {"name": "kascade-operator"}, "spec": {"holderIdentity": "pod-1", "leaseDurationSeconds": 15}}
    assert api.post("/apis/coordination.k8s.io/v1/namespaces/default/leases", json=lease).status_code == 201
    assert (
        api.post("/api/v1/namespaces/default/serviceaccounts", json={"metadata": {"name": "kascade"}}).status_code
        == 201
    )
    assert (
        api.post(
            "/api/v1/namespaces/default/secrets", json={"metadata": {"name": "key"}, "data": {"k": "dg=="}}
        ).status_code
        == 201
    )
    assert (
        api.post(
            "/api/v1/namespaces/default/secrets", json={"metadata": {"name": "bad"}, "data": {"k": "not base64!"}}
        ).status_code
        == 400
    )


def test_a_custom_resource_table_has_the_printer_columns(api: httpx.Client):
    """A real API server answers Accept: as=Table with the CRD's additionalPrinterColumns, evaluated by JSONPath."""
    api.post(
        MC,
        json={
            "apiVersion": "kascade.dev/v1alpha1",
            "kind": "ModelCascade",
            "metadata": {"name": "table"},
            "spec": {"tiers": [{"name": "only", "model": {"uri": "hf://org/model"}}]},
        },
    )
    status = {
        "conditions": [{"type": "Calibrated", "status": "False"}, {"type": "Ready", "status": "True"}],
        "summary": {
            "tiers": "1/1",
            "escalation": "12.5%",
            "saved": "USD 1.23 (45.0%)",
            "reserved": "USD 96.00 (120.0 GPU-h)",
            "netSaved": "USD 1.00 (2.0%)",
        },
        "endpoint": "http://table:8000/v1",
    }
    api.patch(f"{MC}/table/status", json={"status": status}, headers=MERGE)
    table = api.get(MC, headers=TABLE).json()
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    columns = [column["name"] for column in table["columnDefinitions"]]
    assert columns == ["Name", "Ready", "Tiers", "Escalation", "Saved", "Reserved", "Age", "Net", "Endpoint"]
    assert [column["priority"] for column in table["columnDefinitions"][-2:]] == [1, 1]
    row = next(row for row in table["rows"] if row["cells"][0] == "table")
    assert row["cells"][1:6] == ["True", "1/1", "12.5%", "USD 1.23 (45.0%)", "USD 96.00 (120.0 GPU-h)"]
    assert row["cells"][6].endswith("s") and row["cells"][7:] == ["USD 1.00 (2.0%)", "http://table:8000/v1"]
    assert row["object"]["kind"] == "PartialObjectMetadata" and row["object"]["metadata"]["name"] == "table"


def test_a_deployment_table_has_kubectl_columns(api: httpx.Client):
    """A real API server prints Deployments with READY, UP-TO-DATE, AVAILABLE and AGE."""
    deployment = {
        "metadata": {"name": "tabled"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}},
        },
    }
    api.post("/apis/apps/v1/namespaces/default/deployments", json=deployment)
    table = api.get("/apis/apps/v1/namespaces/default/deployments/tabled", headers=TABLE).json()
    assert [c["name"] for c in table["columnDefinitions"]][:5] == ["Name", "Ready", "Up-to-date", "Available", "Age"]


def test_jsonpath_filters_and_indexes():
    """The JSONPath subset of printer columns: fields, indexes, wildcards, filters."""
    obj = {"status": {"conditions": [{"type": "A", "status": "x"}, {"type": "Ready", "status": "True"}]}}
    assert jsonpath(obj, '.status.conditions[?(@.type=="Ready")].status') == ["True"]
    assert jsonpath(obj, ".status.conditions[*].type") == ["A", "Ready"]
    assert jsonpath(obj, ".status.conditions[0].status") == ["x"]
    assert jsonpath(obj, ".status.missing") == []


@pytest.mark.parametrize(
    ("seconds", "shown"), [(5, "5s"), (130, "2m10s"), (3600, "60m"), (5 * 3600 + 60, "5h1m"), (3 * 86400, "3d")]
)
def test_ages_are_shown_like_kubectl(seconds: int, shown: str):
    """kubectl's short duration format for AGE columns."""
    import datetime

    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    then = (now - datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert human_age(then, now) == shown
