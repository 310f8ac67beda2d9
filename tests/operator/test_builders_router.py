"""The router's ConfigMap, Deployment, Service and least-privilege RBAC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kascade.api.modelcascade import ModelCascade
from kascade.operator.build_router import (
    CONFIG_PATH,
    build_router_config,
    build_router_configmap,
    build_router_deployment,
    build_router_role,
    build_router_role_binding,
    build_router_service,
    build_router_service_account,
    endpoint_url,
)
from kascade.operator.builders import build_children
from kascade.operator.cluster_needs import referenced_secrets
from kascade.operator.labels import CONFIG_HASH_ANNOTATION, selector_labels
from kascade.operator.settings import OperatorSettings
from kascade.runtime.config import RouterConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = OperatorSettings()


def example(name: str) -> ModelCascade:
    return ModelCascade.model_validate(yaml.safe_load((EXAMPLES / name).read_text()))


def with_spec(cascade: ModelCascade, **changes: Any) -> ModelCascade:
    body = cascade.model_dump(mode="json", by_alias=True, exclude_none=True)
    for path, value in changes.items():
        node = body["spec"]
        *parents, leaf = path.split("__")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[leaf] = value
    return ModelCascade.model_validate(body)


def read_config(configmap: dict[str, Any]) -> RouterConfig:
    return RouterConfig.model_validate(yaml.safe_load(configmap["data"]["router.yaml"]))


@pytest.mark.parametrize("name", [p.name for p in sorted(EXAMPLES.glob("*.yaml"))])
def test_router_config_round_trips_through_the_configmap(name: str) -> None:
    cascade = example(name)
    configmap = build_router_configmap(cascade, SETTINGS)
    assert read_config(configmap) == build_router_config(cascade, SETTINGS)


def test_router_config_points_at_tier_services_and_external_urls_with_key_files() -> None:
    cascade = example("external-last-tier.yaml")
    config = read_config(build_router_configmap(cascade, SETTINGS))
    small, medium, frontier = config.tiers
    assert config.cascade == "support-bot"
    assert small.url == "http://support-bot-small.llm.svc:8000/v1"
    assert medium.url == "http://support-bot-medium.llm.svc:8000/v1"
    assert frontier.url == "https://api.openai.com/v1"
    assert frontier.served_model == "gpt-4o"
    assert frontier.api_key_file == "/var/run/kascade/secrets/tiers/frontier/api-key"
    assert small.api_key_file is None
    assert small.accept is not None and small.accept.threshold == 0.85
    assert config.retries == 2 and config.streaming.mode.value == "early"
    assert config.api_keys_file is None


def test_router_deployment_mounts_config_and_only_the_needed_secret_keys() -> None:
    cascade = example("external-last-tier.yaml")
    deployment = build_router_deployment(cascade, SETTINGS)
    kubernetes_validate.validate(deployment, "1.30.0", strict=True)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["kascade", "route"]
    assert container["args"] == ["--config", CONFIG_PATH, "--port", "8000"]
    assert CONFIG_PATH == "/etc/kascade/router.yaml"
    assert container["image"] == SETTINGS.runtime_image
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "support-bot-router"
    assert volumes["tier-frontier-api-key"]["secret"] == {
        "secretName": "openai",
        "items": [{"key": "api-key", "path": "api-key"}],
    }
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["config"] == {"name": "config", "mountPath": "/etc/kascade", "readOnly": True}
    assert mounts["tier-frontier-api-key"]["mountPath"] == "/var/run/kascade/secrets/tiers/frontier"
    assert mounts["tier-frontier-api-key"]["readOnly"] is True


def test_client_api_keys_are_a_mounted_file_named_in_the_config() -> None:
    cascade = example("chat-vllm-gpu.yaml")
    config = read_config(build_router_configmap(cascade, SETTINGS))
    assert config.api_keys_file == "/var/run/kascade/secrets/clients/keys"
    pod = build_router_deployment(cascade, SETTINGS)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "client-api-keys")
    assert volume["secret"] == {"secretName": "chat-client-keys", "items": [{"key": "keys", "path": "keys"}]}


def test_router_knows_its_pod_namespace_and_cascade_for_status_reports() -> None:
    cascade = example("chat-vllm-gpu.yaml")
    pod = build_router_deployment(cascade, SETTINGS)["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    report = read_config(build_router_configmap(cascade, SETTINGS)).status_report
    assert report is not None
    assert (report.namespace, report.name, report.pod_env) == ("llm", "chat", "POD_NAME")
    assert report.interval_seconds == SETTINGS.router_status_report_interval_seconds
    assert pod["serviceAccountName"] == "chat-router"
    assert pod["automountServiceAccountToken"] is True


def test_router_probes_and_replicas() -> None:
    cascade = example("chat-vllm-gpu.yaml")
    deployment = build_router_deployment(cascade, SETTINGS)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert deployment["spec"]["replicas"] == 2


def test_router_pods_roll_when_the_config_changes_and_only_then() -> None:
    cascade = example("chat-vllm-gpu.yaml")

    def config_hash(c: ModelCascade) -> str:
        return build_router_deployment(c, SETTINGS)["spec"]["template"]["metadata"]["annotations"][
            CONFIG_HASH_ANNOTATION
        ]

    same = config_hash(cascade)
    assert config_hash(cascade) == same
    assert config_hash(with_spec(cascade, tiers__0__accept__threshold=0.5)) != same
    # Router replicas are not in the config: scaling does not restart the pods.
    assert config_hash(with_spec(cascade, router__replicas=5)) == same
    # The hash is the ConfigMap's, whichever way the deployment gets it.
    configmap = build_router_configmap(cascade, SETTINGS)
    assert build_router_deployment(cascade, SETTINGS, configmap=configmap) == build_router_deployment(cascade, SETTINGS)


def test_router_service_is_the_endpoint() -> None:
    cascade = example("chat-vllm-gpu.yaml")
    service = build_router_service(cascade, SETTINGS)
    kubernetes_validate.validate(service, "1.30.0", strict=True)
    assert service["metadata"]["name"] == "chat-router"
    assert service["spec"]["selector"] == selector_labels("chat", "router")
    assert service["spec"]["ports"][0]["port"] == 8000
    assert endpoint_url(cascade, SETTINGS) == "http://chat-router.llm.svc:8000/v1"


def test_rbac_lets_the_router_get_and_patch_only_its_own_status() -> None:
    cascade = example("chat-vllm-gpu.yaml")
    account = build_router_service_account(cascade, SETTINGS)
    role = build_router_role(cascade, SETTINGS)
    binding = build_router_role_binding(cascade, SETTINGS)
    for manifest in (account, role, binding):
        kubernetes_validate.validate(manifest, "1.30.0", strict=True)
        assert manifest["metadata"]["name"] == "chat-router"
        assert manifest["metadata"]["namespace"] == "llm"
    assert role["kind"] == "Role"  # namespaced, never a ClusterRole
    assert role["rules"] == [
        {
            "apiGroups": ["kascade.dev"],
            "resources": ["modelcascades/status"],
            "resourceNames": ["chat"],
            "verbs": ["get", "patch"],
        }
    ]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "chat-router"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "chat-router", "namespace": "llm"}]


def test_build_children_in_apply_order() -> None:
    cascade = example("external-last-tier.yaml")
    order = [(c["kind"], c["metadata"]["name"]) for c in build_children(cascade, SETTINGS)]
    assert order == [
        ("ServiceAccount", "support-bot-router"),
        ("Role", "support-bot-router"),
        ("RoleBinding", "support-bot-router"),
        ("ConfigMap", "support-bot-router"),
        ("Service", "support-bot-small"),
        ("Deployment", "support-bot-small"),
        ("PodDisruptionBudget", "support-bot-small"),
        ("Service", "support-bot-medium"),
        ("Deployment", "support-bot-medium"),
        ("PodDisruptionBudget", "support-bot-medium"),
        ("Service", "support-bot-router"),
        ("Service", "support-bot-router-metrics"),
        ("Deployment", "support-bot-router"),
        ("PodDisruptionBudget", "support-bot-router"),
    ]


def test_a_tier_named_router_is_refused() -> None:
    cascade = example("chat-vllm-gpu.yaml")
    clash = with_spec(cascade, tiers__1__name="router")
    with pytest.raises(ValueError, match="router"):
        build_children(clash, SETTINGS)


def test_an_escalation_log_on_a_claim_is_mounted_and_the_router_writes_into_it() -> None:
    cascade = with_spec(
        example("chat-vllm-gpu.yaml"),
        escalationLog={
            "enabled": True,
            "uri": "pvc://kascade-logs/cascades/chat",
            "retentionDays": 7,
            "redact": ["ACME-\\d+"],
        },
    )
    config = read_config(build_router_configmap(cascade, SETTINGS))
    assert config.escalation_log is not None
    assert config.escalation_log.uri == "/var/lib/kascade/escalation-log/cascades/chat"
    assert config.escalation_log.retention_days == 7 and config.escalation_log.redact == ["ACME-\\d+"]
    assert config.tiers[-1].returns_token_ids and config.tiers[-1].model_uri == cascade.spec.tiers[-1].model.uri
    pod = build_router_deployment(cascade, SETTINGS)["spec"]["template"]["spec"]
    assert {"name": "escalation-log", "persistentVolumeClaim": {"claimName": "kascade-logs"}} in pod["volumes"]
    assert {"name": "escalation-log", "mountPath": "/var/lib/kascade/escalation-log"} in pod["containers"][0][
        "volumeMounts"
    ]
    assert "envFrom" not in pod["containers"][0]


def test_an_escalation_log_on_s3_takes_its_credentials_from_the_named_secret() -> None:
    cascade = with_spec(
        example("chat-vllm-gpu.yaml"),
        escalationLog={"enabled": True, "uri": "s3://logs/chat", "credentialsSecret": "s3-credentials"},
    )
    assert read_config(build_router_configmap(cascade, SETTINGS)).escalation_log.uri == "s3://logs/chat"
    container = build_router_deployment(cascade, SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert all(mount["name"] != "escalation-log" for mount in container["volumeMounts"])


def test_without_an_escalation_log_the_router_config_has_none() -> None:
    assert read_config(build_router_configmap(example("classify.yaml"), SETTINGS)).escalation_log is None


def test_online_calibration_is_rendered_for_the_routers_and_left_to_the_operator() -> None:
    exact = with_spec(example("chat-vllm-gpu.yaml"), calibration__matcher="exact")
    config = read_config(build_router_configmap(exact, SETTINGS))
    assert config.shadow_sampling is not None and config.shadow_sampling.rate == 0.05
    assert config.shadow_sampling.matcher.value == "exact" and config.shadow_sampling.calibrate_in_process is None
    pinned = with_spec(example("chat-vllm-gpu.yaml"), calibration__shadowSampleRate=0)
    assert read_config(build_router_configmap(pinned, SETTINGS)).shadow_sampling is None
    classify = read_config(build_router_configmap(example("classify.yaml"), SETTINGS))
    assert classify.shadow_sampling is not None and classify.shadow_sampling.matcher.value == "label"


def test_the_flagship_judges_with_its_last_tier_and_an_external_judge_gets_its_key_mounted() -> None:
    flagship = read_config(build_router_configmap(example("chat-vllm-gpu.yaml"), SETTINGS)).shadow_sampling
    assert flagship is not None and flagship.matcher.value == "judge" and flagship.judge is not None
    assert flagship.judge.url is None and flagship.judge.model == "llama-3.1-70b-instruct"  # the last tier
    assert flagship.judge.price.input_per_million == 0.88 and flagship.judge.api_key_file is None
    external = with_spec(
        example("chat-vllm-gpu.yaml"),
        calibration__judge={
            "url": "https://judge.example/v1",
            "model": "judge-model",
            "apiKeySecret": {"name": "judge-key", "key": "token"},
            "price": {"currency": "USD", "inputPerMillion": 0.1, "outputPerMillion": 0.2},
        },
    )
    judge = read_config(build_router_configmap(external, SETTINGS)).shadow_sampling.judge
    assert judge is not None and judge.url == "https://judge.example/v1" and judge.model == "judge-model"
    assert judge.price.output_per_million == 0.2
    pod = build_router_deployment(external, SETTINGS)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "judge-key"]
    assert volume["secret"]["items"] == [{"key": "token", "path": "api-key"}]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert judge.api_key_file == f"{mount['mountPath']}/api-key"
    assert referenced_secrets(external)["judge-key"] == {"token"}  # the operator checks that it exists
    pinned = with_spec(external, calibration__shadowSampleRate=0)  # no router asks the judge: nothing mounted
    assert all(
        v["name"] != volume["name"]
        for v in build_router_deployment(pinned, SETTINGS)["spec"]["template"]["spec"]["volumes"]
    )
