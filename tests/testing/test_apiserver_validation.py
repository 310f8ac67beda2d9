"""Schema validation, pruning, defaulting and the built-in kinds' checks, as on a real API server."""

from __future__ import annotations

import base64
import copy

import httpx
import pytest

from kascade.testing.quantity import canonical_quantity

pytestmark = pytest.mark.slow  # the API-server stand-in on loopback

MC = "/apis/kascade.dev/v1alpha1/namespaces/default/modelcascades"
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
CM = "/api/v1/namespaces/default/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}

CASCADE = {
    "apiVersion": "kascade.dev/v1alpha1",
    "kind": "ModelCascade",
    "metadata": {"name": "valid"},
    "spec": {
        "tiers": [
            {"name": "small", "model": {"uri": "hf://org/small"}, "accept": {"threshold": 0.5}},
            {"name": "large", "model": {"uri": "hf://org/large"}},
        ]
    },
}


def cascade(name: str) -> dict:
    body = copy.deepcopy(CASCADE)
    body["metadata"]["name"] = name
    return body


def deployment(name: str) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "engine", "image": "vllm/vllm-openai:v0.9.0"}]},
            },
        },
    }


def causes(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    status = response.json()
    assert status["kind"] == "Status" and status["reason"] == "Invalid"
    return {cause["field"]: cause["reason"] for cause in status["details"]["causes"]}


# --- custom resources ---------------------------------------------------------------------------


def test_schema_violations_are_invalid_with_field_paths(api: httpx.Client):
    """A real API server answers 422 Invalid with details.causes naming each bad field (spec.tiers[0].replicas...)."""
    body = cascade("bad-schema")
    body["spec"]["tiers"][0]["replicas"] = -1
    body["spec"]["tiers"][1]["name"] = "Large"
    body["spec"]["task"] = "translate"
    found = causes(api.post(MC, json=body))
    assert found == {
        "spec.tiers[0].replicas": "FieldValueInvalid",
        "spec.tiers[1].name": "FieldValueInvalid",
        "spec.task": "FieldValueNotSupported",
    }
    assert 'ModelCascade.kascade.dev "bad-schema" is invalid' in api.post(MC, json=body).json()["message"]


def test_a_missing_required_field_is_required_value(api: httpx.Client):
    """A real API server reports a missing required property as FieldValueRequired at its full path."""
    body = cascade("bad-required")
    del body["spec"]["tiers"][0]["model"]
    assert causes(api.post(MC, json=body)) == {"spec.tiers[0].model": "FieldValueRequired"}


def test_a_wrong_type_is_type_invalid(api: httpx.Client):
    """A real API server reports a value of the wrong JSON type as FieldValueTypeInvalid."""
    body = cascade("bad-type")
    body["spec"]["tiers"][0]["replicas"] = "two"
    assert causes(api.post(MC, json=body)) == {"spec.tiers[0].replicas": "FieldValueTypeInvalid"}


def test_cel_rules_refuse_cross_field_mistakes(api: httpx.Client):
    """A real API server evaluates the CRD's x-kubernetes-validations (CEL) and answers 422 with the rule's message."""
    body = cascade("bad-cel")
    body["spec"]["tiers"][1]["name"] = "small"  # tier names must be unique
    response = api.post(MC, json=body)
    found = causes(response)
    assert "spec" in found
    assert any("unique" in cause["message"] for cause in response.json()["details"]["causes"])


def test_cel_rules_also_guard_updates(api: httpx.Client):
    """A real API server validates updates too: a patch that breaks a CEL rule is 422 and changes nothing."""
    api.post(MC, json=cascade("cel-update"))
    response = api.patch(
        f"{MC}/cel-update",
        json={"spec": {"tiers": [{"name": "only", "model": {"uri": "hf://x/y"}, "accept": {"threshold": 0.5}}]}},
        headers=MERGE,
    )
    assert response.status_code == 422
    assert len(api.get(f"{MC}/cel-update").json()["spec"]["tiers"]) == 2


def test_unknown_fields_are_pruned_with_a_warning(api: httpx.Client):
    """A real API server prunes fields the structural schema does not declare and warns (299) about each; it does not refuse."""
    body = cascade("prune")
    body["spec"]["tierz"] = []
    body["spec"]["tiers"][0]["modle"] = "typo"
    body["metadata"]["extra"] = "x"
    response = api.post(MC, json=body)
    assert response.status_code == 201
    spec = response.json()["spec"]
    assert "tierz" not in spec and "modle" not in spec["tiers"][0] and "extra" not in response.json()["metadata"]
    warnings = response.headers.get_list("warning")
    assert any('unknown field \\"spec.tierz\\"' in warning for warning in warnings)
    assert any("spec.tiers[0].modle" in warning for warning in warnings)


def test_strict_field_validation_refuses_unknown_fields(api: httpx.Client):
    """A real API server answers 400 BadRequest "strict decoding error: unknown field" with ?fieldValidation=Strict (kubectl's default)."""
    body = cascade("strict")
    body["spec"]["tierz"] = []
    response = api.post(MC, params={"fieldValidation": "Strict"}, json=body)
    assert response.status_code == 400
    assert 'strict decoding error: unknown field "spec.tierz"' in response.json()["message"]


def test_defaults_are_applied(api: httpx.Client):
    """A real API server fills the schema's defaults into custom resources it stores."""
    obj = api.post(MC, json=cascade("defaults")).json()
    assert obj["spec"]["task"] == "chat"
    assert obj["spec"]["tiers"][0]["engine"] == "vllm" and obj["spec"]["tiers"][0]["replicas"] == 1
    assert obj["spec"]["tiers"][0]["accept"]["method"] == "geometricMean"


def test_list_map_keys_must_be_unique(api: httpx.Client):
    """A real API server refuses duplicate keys in an x-kubernetes-list-type: map list (FieldValueDuplicate)."""
    api.post(MC, json=cascade("list-map"))
    conditions = [{"type": "Ready", "status": "True"}, {"type": "Ready", "status": "False"}]
    response = api.patch(f"{MC}/list-map/status", json={"status": {"conditions": conditions}}, headers=MERGE)
    assert causes(response) == {"status.conditions[1]": "FieldValueDuplicate"}


def test_status_is_validated_too(api: httpx.Client):
    """A real API server validates writes to /status against the status schema."""
    api.post(MC, json=cascade("status-invalid"))
    response = api.patch(
        f"{MC}/status-invalid/status",
        json={"status": {"conditions": [{"type": "Ready", "status": "Maybe"}]}},
        headers=MERGE,
    )
    assert causes(response) == {"status.conditions[0].status": "FieldValueNotSupported"}


# --- metadata ------------------------------------------------------------------------------------


def test_an_invalid_name_is_refused(api: httpx.Client):
    """A real API server refuses names that are not lowercase RFC 1123 subdomains (422 on metadata.name)."""
    assert causes(api.post(CM, json={"metadata": {"name": "Not_Valid"}})) == {"metadata.name": "FieldValueInvalid"}


def test_label_values_longer_than_63_characters_are_refused(api: httpx.Client):
    """A real API server refuses label values longer than 63 characters."""
    response = api.post(CM, json={"metadata": {"name": "long-label", "labels": {"app": "x" * 64}}})
    assert causes(response) == {"metadata.labels": "FieldValueInvalid"}


def test_owner_references_need_a_uid(api: httpx.Client):
    """A real API server refuses an ownerReference with an empty uid (what kopf.adopt of an unsaved body would produce)."""
    owner_ref = {"apiVersion": "kascade.dev/v1alpha1", "kind": "ModelCascade", "name": "x", "controller": True}
    response = api.post(CM, json={"metadata": {"name": "owned-no-uid", "ownerReferences": [owner_ref]}})
    assert causes(response) == {"metadata.ownerReferences[0].uid": "FieldValueInvalid"}


def test_only_one_owner_reference_may_be_the_controller(api: httpx.Client):
    """A real API server refuses two ownerReferences with controller: true."""
    refs = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": n, "uid": f"uid-{n}", "controller": True} for n in ("a", "b")
    ]
    assert "metadata.ownerReferences" in causes(
        api.post(CM, json={"metadata": {"name": "two-controllers", "ownerReferences": refs}})
    )


def test_finalizers_must_be_qualified(api: httpx.Client):
    """A real API server refuses a finalizer that is neither standard nor domain-qualified."""
    response = api.post(CM, json={"metadata": {"name": "bad-finalizer", "finalizers": ["cleanup"]}})
    assert causes(response) == {"metadata.finalizers[0]": "FieldValueInvalid"}


# --- built-in kinds ----------------------------------------------------------------------------------


def test_deployment_selector_must_match_template_labels(api: httpx.Client):
    """A real API server answers 422: "spec.template.metadata.labels: `selector` does not match template `labels`"."""
    body = deployment("selector-mismatch")
    body["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    assert causes(api.post(DEPLOY, json=body)) == {"spec.template.metadata.labels": "FieldValueInvalid"}


def test_deployment_selector_is_immutable(api: httpx.Client):
    """A real API server refuses changing an apps/v1 Deployment's spec.selector ("field is immutable")."""
    api.post(DEPLOY, json=deployment("selector-immutable"))
    patch = {
        "spec": {
            "selector": {"matchLabels": {"app": "selector-immutable", "v": "2"}},
            "template": {"metadata": {"labels": {"v": "2"}}},
        }
    }
    found = causes(api.patch(f"{DEPLOY}/selector-immutable", json=patch, headers=MERGE))
    assert found == {"spec.selector": "FieldValueInvalid"}


def test_a_container_needs_an_image(api: httpx.Client):
    """A real API server answers 422 "spec.template.spec.containers[0].image: Required value"."""
    body = deployment("no-image")
    del body["spec"]["template"]["spec"]["containers"][0]["image"]
    assert causes(api.post(DEPLOY, json=body)) == {"spec.template.spec.containers[0].image": "FieldValueRequired"}


def test_duplicate_container_names_are_refused(api: httpx.Client):
    """A real API server refuses two containers with the same name (FieldValueDuplicate)."""
    body = deployment("dup-containers")
    body["spec"]["template"]["spec"]["containers"].append({"name": "engine", "image": "x:1"})
    assert causes(api.post(DEPLOY, json=body)) == {"spec.template.spec.containers[1]": "FieldValueDuplicate"}


def test_a_wrong_type_in_a_built_in_kind_is_a_bad_request(api: httpx.Client):
    """A real API server cannot decode a built-in object with a wrongly typed field: 400 BadRequest."""
    body = deployment("bad-replicas")
    body["spec"]["replicas"] = "three"
    assert api.post(DEPLOY, json=body).status_code == 400


def test_deployments_get_the_server_defaults(api: httpx.Client):
    """A real API server defaults a Deployment's strategy, revision history, progress deadline and pod template."""
    obj = api.post(DEPLOY, json=deployment("defaulted")).json()
    spec = obj["spec"]
    assert spec["replicas"] == 1 and spec["revisionHistoryLimit"] == 10 and spec["progressDeadlineSeconds"] == 600
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    pod = spec["template"]["spec"]
    assert (
        pod["restartPolicy"] == "Always"
        and pod["dnsPolicy"] == "ClusterFirst"
        and pod["schedulerName"] == "default-scheduler"
    )
    container = pod["containers"][0]
    assert container["imagePullPolicy"] == "IfNotPresent" and container["terminationMessagePolicy"] == "File"


def test_unknown_fields_of_built_in_kinds_are_pruned(api: httpx.Client):
    """A real API server drops fields a built-in type does not have (a misspelt readinessProbes) and warns."""
    body = deployment("typo")
    body["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {"httpGet": {"port": 8000}}
    response = api.post(DEPLOY, json=body)
    assert response.status_code == 201
    assert "readinessProbes" not in response.json()["spec"]["template"]["spec"]["containers"][0]
    assert any("readinessProbes" in warning for warning in response.headers.get_list("warning"))


def test_resource_quantities_are_canonicalised(api: httpx.Client):
    """A real API server stores quantities canonically: 0.5 -> 500m, 1024Mi -> 1Gi, 2 -> "2"."""
    body = deployment("quantities")
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"cpu": "0.5", "memory": "1024Mi", "nvidia.com/gpu": 2},
        "requests": {"cpu": "1000m"},
    }
    resources = api.post(DEPLOY, json=body).json()["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"limits": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "2"}, "requests": {"cpu": "1"}}


@pytest.mark.parametrize(
    ("written", "stored"),
    [("1.5Gi", "1536Mi"), ("0.1", "100m"), ("1000", "1k"), ("1500", "1500"), ("129e6", "129e6"), ("100M", "100M")],
)
def test_quantity_canonical_forms(written: str, stored: str):
    """Go's Quantity.String() forms, which the server stores."""
    assert canonical_quantity(written) == stored


def test_services_get_a_cluster_ip_and_port_defaults(api: httpx.Client):
    """A real API server allocates spec.clusterIP and defaults protocol TCP and targetPort = port."""
    service = api.post(
        "/api/v1/namespaces/default/services",
        json={"metadata": {"name": "svc"}, "spec": {"selector": {"a": "b"}, "ports": [{"port": 80}]}},
    ).json()
    assert service["spec"]["clusterIP"].startswith("10.96.")
    assert service["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    assert service["spec"]["type"] == "ClusterIP"


def test_a_service_needs_ports(api: httpx.Client):
    """A real API server answers 422 "spec.ports: Required value" for a ClusterIP Service without ports."""
    response = api.post("/api/v1/namespaces/default/services", json={"metadata": {"name": "svc-no-ports"}, "spec": {}})
    assert causes(response) == {"spec.ports": "FieldValueRequired"}


def test_secret_string_data_is_folded_into_data(api: httpx.Client):
    """A real API server moves Secret stringData into base64 data and defaults type Opaque."""
    secret = api.post(
        "/api/v1/namespaces/default/secrets", json={"metadata": {"name": "sec"}, "stringData": {"key": "v"}}
    ).json()
    assert "stringData" not in secret and secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["key"]) == b"v"


def test_configmap_keys_must_be_valid(api: httpx.Client):
    """A real API server refuses ConfigMap keys with characters other than alphanumerics, '-', '_' and '.'."""
    assert causes(api.post(CM, json={"metadata": {"name": "bad-key"}, "data": {"a b": "1"}})) == {
        "data[a b]": "FieldValueInvalid"
    }
