"""The chart renders valid Kubernetes objects for every value set, and the operator pod is locked down.

helm is the real binary (`helm lint`, `helm template`); every rendered object
goes through Kubernetes' own schemas with kubernetes-validate --strict, at the
oldest Kubernetes the chart supports and the newest the validator knows.
"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_testkit import (
    CHART,
    NAMESPACE,
    VALUE_SETS,
    by_kind,
    helm,
    lint,
    notes,
    operator_container,
    operator_deployment,
    operator_env,
    render,
    render_values,
    template,
)

from kascade import __version__
from kascade.api.modelcascade import ModelCascade
from kascade.operator.settings import (
    DEFAULT_RUNTIME_IMAGE,
    DEFAULT_VLLM_IMAGE,
    OperatorSettings,
)

pytestmark = pytest.mark.slow  # helm template and lint

# The drift reconcile's interval is an operator setting like the others.
RECONCILE_INTERVAL_ENV = "KASCADE_RECONCILE_INTERVAL_SECONDS"
DEFAULT_RECONCILE_INTERVAL_S = OperatorSettings().reconcile_interval_seconds


def reconcile_interval(env: dict[str, str]) -> float:
    return OperatorSettings.from_env(env).reconcile_interval_seconds


# Chart.yaml's kubeVersion floor, and the newest schemas.
KUBE_VERSION_FLOOR = re.fullmatch(
    r">=(\d+\.\d+\.\d+)-0", yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
)
assert KUBE_VERSION_FLOOR, "Chart.yaml's kubeVersion is not of the form >=X.Y.Z-0"
KUBERNETES_VERSIONS = (KUBE_VERSION_FLOOR.group(1), "1.37.0")
NOT_BUILT_IN = {"monitoring.coreos.com/v1": "ServiceMonitor"}  # checked in test_chart_metrics.py
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize("value_set", ["defaults", "namespaced", "metrics"])
def test_helm_lint_strict_passes(value_set: str):
    done = lint(VALUE_SETS[value_set])
    assert "0 chart(s) failed" in done.stdout, done.stdout


def test_chart_and_app_version_follow_the_package():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "kascade"
    assert chart["appVersion"] == __version__, "bump Chart.yaml's appVersion with kascade.__version__"


@pytest.mark.parametrize("value_set", VALUE_SETS)
@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_every_rendered_object_passes_kubernetes_validate_strict(value_set: str, kubernetes_version: str):
    objects = render(value_set)
    assert objects
    for obj in objects:
        if NOT_BUILT_IN.get(obj["apiVersion"]) == obj["kind"]:
            continue
        try:
            kubernetes_validate.validate(obj, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{value_set}: {obj['kind']} {obj['metadata']['name']}: {error.message} at {list(error.path)}")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_names_fit_and_namespaced_objects_land_where_they_should(value_set: str):
    objects = render(value_set)
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] not in cluster_scoped:
            assert DNS_LABEL.match(name) and len(name) <= 63, f"{obj['kind']} {name!r}"
            assert obj["metadata"].get("namespace"), f"{obj['kind']} {name} has no namespace"
        for key, value in obj["metadata"].get("labels", {}).items():
            assert len(str(value)) <= 63, f"{obj['kind']} {name}: label {key}={value!r} is too long"


def test_a_long_release_name_is_truncated_to_63_characters():
    release = "a-release-name-as-long-as-helm-allows-which-is-53-chr"  # helm's limit; plus "-kascade": 61
    assert len(release) == 53
    done = helm(
        "template", release, str(CHART), "--namespace", NAMESPACE, "--set", "metrics.serviceMonitor.enabled=true"
    )
    names = [obj["metadata"]["name"] for obj in yaml.safe_load_all(done.stdout) if obj]
    assert names and all(len(name) <= 63 and DNS_LABEL.match(name) and "--" not in name for name in names), names
    assert {name.rsplit("-", 1)[1] for name in names} == {"operator", "routers"}, names


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_operator_deployment_selects_its_own_pods_with_stable_labels(value_set: str):
    deployment = operator_deployment(render(value_set))
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
    assert labels["app.kubernetes.io/component"] == "operator"
    # The routers' ServiceMonitor selects component=router: the operator never matches it.
    assert labels["app.kubernetes.io/component"] != "router"
    # --standalone: never two operators at once.
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_operator_pod_meets_the_restricted_pod_security_standard(value_set: str):
    """Non-root, read-only root filesystem, no capabilities, seccomp RuntimeDefault, requests and limits."""
    pod = operator_deployment(render(value_set))["spec"]["template"]["spec"]
    container = operator_container(render(value_set))
    pod_context, context = pod["securityContext"], container["securityContext"]
    assert pod_context["runAsNonRoot"] is True and pod_context["runAsUser"] != 0
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert not any(key in pod for key in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("emptyDir" in volume for volume in pod.get("volumes", []))  # restricted: no hostPath
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_operator_is_probed_on_kopfs_liveness_endpoint(value_set: str):
    container = operator_container(render(value_set))
    liveness = next(arg for arg in container["args"] if arg.startswith("--liveness="))
    port = int(re.fullmatch(r"--liveness=http://0\.0\.0\.0:(\d+)/healthz", liveness).group(1))
    assert container["ports"] == [{"name": "healthz", "containerPort": port, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}, probe


def test_the_operator_command_follows_the_watch_mode():
    assert operator_container(render("defaults"))["command"] == ["kascade", "operator"]
    assert operator_container(render("defaults"))["args"][:2] == ["--all-namespaces", "--standalone"]
    args = operator_container(render("namespaced"))["args"]
    assert args[:3] == ["--namespace=team-a", "--namespace=team-b", "--standalone"]
    assert "--all-namespaces" not in args


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_operator_settings_the_chart_passes_are_accepted_by_the_operator(value_set: str):
    """Every KASCADE_* variable names an OperatorSettings field, and from_env reads the lot without error."""
    env = operator_env(render(value_set))
    fields = {f"KASCADE_{name.upper()}" for name in OperatorSettings.model_fields}
    unknown = {name for name in env if name.startswith("KASCADE_")} - fields - {RECONCILE_INTERVAL_ENV}
    assert unknown == set(), f"the operator reads no such setting: {sorted(unknown)}"
    OperatorSettings.from_env(env)
    reconcile_interval(env)


def test_default_values_give_the_operators_own_defaults():
    """With default values the chart changes nothing the operator would do without it."""
    env = operator_env(render("defaults"))
    settings = OperatorSettings.from_env(env)
    assert settings == OperatorSettings()
    assert reconcile_interval(env) == DEFAULT_RECONCILE_INTERVAL_S
    assert settings.runtime_image == DEFAULT_RUNTIME_IMAGE and settings.vllm_image == DEFAULT_VLLM_IMAGE
    assert settings.runtime_gpu_image == f"{DEFAULT_RUNTIME_IMAGE}-cuda"


def test_customised_values_reach_the_operator():
    settings = OperatorSettings.from_env(operator_env(render("customised")))
    assert settings.runtime_image == "registry.example.com/kascade/runtime:0.1.0"
    assert settings.runtime_gpu_image == "registry.example.com/kascade/runtime:0.1.0-cuda"
    assert settings.vllm_image == "registry.example.com/vllm/vllm-openai:v0.11.1"
    assert settings.image_pull_policy == "Always"
    assert settings.gpu_tolerations == ({"key": "gpu", "operator": "Exists"},)
    assert settings.tier_node_selector == {"node-pool": "inference"}
    assert (settings.model_cache_size, settings.model_cache_storage_class) == ("500Gi", "fast-ssd")
    assert settings.shm_size == "16Gi"
    assert (settings.router_cpu, settings.router_memory) == ("1", "1Gi")
    assert settings.router_status_report_interval_seconds == 5
    assert settings.autoscaler == "hpa" and settings.hpa_cpu_utilization == 60
    assert settings.prometheus_address == "http://prometheus.observability.svc:9090"
    assert settings.startup_probe_failure_threshold == 360  # through operator.extraEnv
    assert reconcile_interval(operator_env(render("customised"))) == 30


@pytest.mark.parametrize(
    ("value_set", "flags"), [("defaults", []), ("customised", ["--verbose"]), ("cluster-wide", ["--debug"])]
)
def test_the_log_level_becomes_the_operators_flag(value_set: str, flags: list[str]):
    args = operator_container(render(value_set))["args"]
    assert [arg for arg in args if arg in ("--verbose", "--debug")] == flags


def test_customised_operator_pod_settings_are_applied():
    objects = render("customised")
    pod = operator_deployment(objects)["spec"]["template"]["spec"]
    container = operator_container(objects)
    assert container["image"] == "registry.example.com/kascade/operator:0.1.0-rc1"
    assert container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "cascade-operator"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert operator_deployment(objects)["metadata"]["name"] == "llm-cascades-operator"
    (account,) = by_kind(objects, "ServiceAccount")
    assert account["metadata"]["annotations"] == {"iam.example.com/role": "kascade"}


def test_an_existing_service_account_is_used_and_not_created():
    objects = render_values({"serviceAccount": {"create": False, "name": "platform-operator"}})
    assert by_kind(objects, "ServiceAccount") == []
    assert operator_deployment(objects)["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"


def test_the_default_operator_image_is_the_charts_app_version():
    assert operator_container(render("defaults"))["image"] == f"ghcr.io/kascade-dev/kascade-operator:{__version__}"


def test_a_cluster_older_than_the_objects_need_is_refused_by_helm():
    """podFailurePolicy (1.26, GA 1.31) and GA CEL rules (1.29): helm says so before anything is applied."""
    assert KUBERNETES_VERSIONS[0] == "1.29.0"
    done = template({}, "--kube-version", "1.28.0", check=False)
    assert done.returncode != 0 and "kubeVersion" in done.stderr and ">=1.29.0-0" in done.stderr
    template({}, "--kube-version", "1.29.0")


def test_an_image_registry_moves_the_kascade_images_and_keeps_their_names():
    """Images you built and pushed: one value points the operator, the routers, tiers and Jobs at them."""
    objects = render_values({"imageRegistry": "registry.example.com:5000/ml/"})
    assert operator_container(objects)["image"] == f"registry.example.com:5000/ml/kascade-operator:{__version__}"
    settings = OperatorSettings.from_env(operator_env(objects))
    assert settings.runtime_image == f"registry.example.com:5000/ml/kascade-runtime:{__version__}"
    assert settings.runtime_gpu_image == f"registry.example.com:5000/ml/kascade-runtime:{__version__}-cuda"
    assert settings.vllm_image == "vllm/vllm-openai:v0.33.0"  # upstream's image: moved only by its own repository


def test_a_parent_charts_global_image_registry_is_used_unless_the_charts_own_is_set():
    from_global = render_values({"global": {"imageRegistry": "mirror.example.com", "other": "kept"}})
    assert operator_container(from_global)["image"] == f"mirror.example.com/kascade-operator:{__version__}"
    both = render_values({"global": {"imageRegistry": "mirror.example.com"}, "imageRegistry": "own.example.com/k"})
    assert operator_container(both)["image"] == f"own.example.com/k/kascade-operator:{__version__}"


def test_the_default_vllm_image_is_the_tested_one():
    objects = render("defaults")
    assert OperatorSettings.from_env(operator_env(objects)).vllm_image == "vllm/vllm-openai:v0.33.0"


# --- NOTES.txt ------------------------------------------------------------------------------


def _example_in(text: str) -> dict[str, Any]:
    block = re.search(r"<<'YAML'\n(.*?)\nYAML\n", text, re.S)
    assert block, text
    return yaml.safe_load(block.group(1))


def test_notes_say_what_to_apply_next_and_how_to_watch_it():
    text = notes({})
    assert "kubectl -n kascade-system rollout status deployment/kascade-operator" in text
    assert "kubectl apply -n default -f - <<'YAML'" in text
    assert "kubectl get modelcascades -n default -w" in text
    assert "helm show crds" in text  # how to upgrade the CRD
    cascade = ModelCascade.model_validate(_example_in(text))
    assert all(tier.resources.gpus == 0 for tier in cascade.spec.tiers), "the NOTES example must run without GPUs"
    assert f"service/{cascade.metadata.name}-router" in text and f'"model": "{cascade.metadata.name}"' in text


def test_notes_point_into_a_watched_namespace_and_mention_metrics():
    text = notes({"watch": {"namespaces": ["ml", "research"]}, **VALUE_SETS["metrics"]})
    assert "ModelCascades in: ml, research" in text
    assert "kubectl apply -n ml -f -" in text and "kubectl get modelcascades -n ml -w" in text
    assert "servicemonitor/kascade-routers" in text and "configmap/kascade-dashboard" in text


def test_the_chart_packages_with_its_crds_schema_and_dashboard(tmp_path):
    import tarfile

    helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("kascade-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for member in (
        "Chart.yaml",
        "values.yaml",
        "values.schema.json",
        "crds/kascade.dev_modelcascades.yaml",
        "dashboards/kascade.json",
        "templates/NOTES.txt",
        "templates/_helpers.tpl",
    ):
        assert f"kascade/{member}" in names, member
