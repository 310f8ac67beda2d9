"""Every pod Kascade creates is one a namespace that enforces Pod Security "restricted" admits, runs as a
user that can write what it writes, and rolls out on a GPU pool with no spare GPUs."""

from __future__ import annotations

import copy
import posixpath
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kascade.api.distillation import Distillation
from kascade.api.loop import Training
from kascade.api.modelcascade import ModelCascade
from kascade.operator.build_distillation import build_distillation, build_distillation_job, job_deadline_seconds
from kascade.operator.build_router import build_router_deployment
from kascade.operator.build_tier import build_tier_deployment
from kascade.operator.builders import build_children
from kascade.operator.settings import OperatorSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
SETTINGS = OperatorSettings()
UID = 65532  # the runtime image's user (images/runtime.Dockerfile)

# --- the restricted profile, as the API server's PodSecurity admission checks it (v1.37) --------------------

# Volume types "restricted" allows; anything else (hostPath above all) is refused.
ALLOWED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
ALLOWED_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Each rule of the restricted profile `pod` (a pod spec) breaks, named by the field that breaks it."""
    problems: list[str] = []
    pod_context = pod.get("securityContext") or {}
    containers = [
        (field, c) for field in ("initContainers", "containers", "ephemeralContainers") for c in pod.get(field, [])
    ]
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"spec.{field}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            problems.append(f"spec.volumes[{volume['name']}]: {sorted(kinds - ALLOWED_VOLUME_TYPES)}")
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"spec.securityContext.sysctls[{sysctl['name']}]")
    if pod_context.get("runAsUser") == 0:
        problems.append("spec.securityContext.runAsUser: 0")
    if pod_context.get("windowsOptions", {}).get("hostProcess"):
        problems.append("spec.securityContext.windowsOptions.hostProcess")
    problems += _selinux_and_apparmor("spec.securityContext", pod_context)
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        problems.append(f"spec.securityContext.seccompProfile.type: {pod_seccomp}")
    for field, container in containers:
        where = f"spec.{field}[{container['name']}]"
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{where}.securityContext.privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}.securityContext.allowPrivilegeEscalation must be false")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{where}.securityContext.capabilities.drop must include ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}.securityContext.capabilities.add")
        if context.get("runAsUser") == 0:
            problems.append(f"{where}.securityContext.runAsUser: 0")
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{where}.securityContext.runAsNonRoot must be true (here or on the pod)")
        seccomp = (context.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}.securityContext.seccompProfile.type must be RuntimeDefault (here or on the pod)")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{where}.securityContext.procMount")
        if context.get("windowsOptions", {}).get("hostProcess"):
            problems.append(f"{where}.securityContext.windowsOptions.hostProcess")
        problems += _selinux_and_apparmor(f"{where}.securityContext", context)
        for port in container.get("ports", []):
            if port.get("hostPort"):
                problems.append(f"{where}.ports[{port.get('name', port['containerPort'])}].hostPort")
    return problems


def _selinux_and_apparmor(where: str, context: dict[str, Any]) -> list[str]:
    problems = []
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in ALLOWED_SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        problems.append(f"{where}.seLinuxOptions")
    if (context.get("appArmorProfile") or {}).get("type", "RuntimeDefault") not in ("RuntimeDefault", "Localhost"):
        problems.append(f"{where}.appArmorProfile")
    return problems


# --- what Kascade builds -------------------------------------------------------------------------------------


def _cascades(path: Path) -> list[ModelCascade]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == "ModelCascade"]
    return [ModelCascade.model_validate(doc) for doc in docs]


def _distillation_job(cascade: ModelCascade, settings: OperatorSettings = SETTINGS) -> dict[str, Any]:
    run = build_distillation(cascade, settings, name=f"{cascade.metadata.name}-d1", log_records=5000)
    return build_distillation_job(Distillation.model_validate(run), settings)


def _workloads(cascade: ModelCascade, settings: OperatorSettings = SETTINGS) -> list[dict[str, Any]]:
    """The cascade's Deployments, and its distillation Job where it distils."""
    workloads = [child for child in build_children(cascade, settings) if child["kind"] == "Deployment"]
    if cascade.spec.distillation is not None:
        workloads.append(_distillation_job(cascade, settings))
    return workloads


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _example(name: str) -> ModelCascade:
    return _cascades(EXAMPLES / name)[0]


def _with_tier(cascade: ModelCascade, index: int = 0, **tier: Any) -> ModelCascade:
    """`cascade` with tier `index` changed (and checked again by the API types)."""
    raw = cascade.model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["spec"]["tiers"][index].update(tier)
    return ModelCascade.model_validate(raw)


def test_examples_cover_both_engines_the_router_and_a_distillation_job() -> None:
    """Guards the test below: what it checks is every kind of pod Kascade makes."""
    cascades = [cascade for path in EXAMPLE_FILES for cascade in _cascades(path)]
    engines = {tier.engine.value for cascade in cascades for tier in cascade.spec.tiers}
    assert {"vllm", "transformers"} <= engines
    assert any(cascade.spec.distillation is not None for cascade in cascades)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_pod_of_every_example_passes_pod_security_restricted(path: Path) -> None:
    for cascade in _cascades(path):
        for workload in _workloads(cascade):
            assert restricted_violations(_pod(workload)) == [], workload["metadata"]["name"]
            kubernetes_validate.validate(workload, "1.30.0", strict=True)


def test_the_checker_names_the_fields_a_root_pod_gets_wrong() -> None:
    """Guards the test above: the checker does refuse what the API server refuses, by field."""
    deployment = build_tier_deployment(
        _example("chat-vllm-gpu.yaml"), _example("chat-vllm-gpu.yaml").spec.tiers[0], SETTINGS
    )
    pod = copy.deepcopy(_pod(deployment))
    del pod["securityContext"]
    pod["containers"][0].pop("securityContext")
    pod["initContainers"] = [{"name": "fetch", "image": "busybox", "securityContext": {"runAsUser": 0}}]
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/var/lib"}})
    problems = restricted_violations(pod)
    assert "spec.volumes[host]: ['hostPath']" in problems
    assert "spec.containers[engine].securityContext.allowPrivilegeEscalation must be false" in problems
    assert "spec.containers[engine].securityContext.capabilities.drop must include ALL" in problems
    assert "spec.containers[engine].securityContext.runAsNonRoot must be true (here or on the pod)" in problems
    assert (
        "spec.containers[engine].securityContext.seccompProfile.type must be RuntimeDefault (here or on the pod)"
        in problems
    )
    assert "spec.initContainers[fetch].securityContext.runAsUser: 0" in problems


def test_init_containers_get_the_restricted_context_too() -> None:
    from kascade.operator.pod_security import restricted

    pod = restricted(
        {"initContainers": [{"name": "a", "image": "x"}], "containers": [{"name": "b", "image": "x"}]}, SETTINGS
    )
    assert restricted_violations(pod) == []


# --- the users pods run as, and what they may write ----------------------------------------------------------


def test_every_pod_runs_as_the_runtime_images_user_with_its_group_owning_the_volumes() -> None:
    for path in EXAMPLE_FILES:
        for cascade in _cascades(path):
            for workload in _workloads(cascade):
                context = _pod(workload)["securityContext"]
                assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (UID, UID, UID)
                # Not a recursive chown of a claim of model weights at every start.
                assert context["fsGroupChangePolicy"] == "OnRootMismatch"


def test_the_router_writes_the_escalation_logs_claim_as_its_fs_group() -> None:
    cascade = _example("chat-vllm-gpu.yaml")
    assert cascade.spec.escalation_log is not None and cascade.spec.escalation_log.uri.startswith("pvc://")
    pod = _pod(build_router_deployment(cascade, SETTINGS))
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == claim["name"])
    assert not mount.get("readOnly") and not claim["persistentVolumeClaim"].get("readOnly")
    assert pod["securityContext"]["fsGroup"] == UID


def test_the_distillation_job_writes_the_students_claim_as_its_fs_group() -> None:
    cascade = _example("chat-vllm-gpu.yaml")
    pod = _pod(_distillation_job(cascade))
    assert cascade.spec.distillation is not None
    students = cascade.spec.distillation.output_uri.removeprefix("pvc://").split("/")[0]
    volume = next(v for v in pod["volumes"] if v["persistentVolumeClaim"]["claimName"] == students)
    assert volume["persistentVolumeClaim"]["readOnly"] is False
    assert pod["securityContext"]["fsGroup"] == UID


def test_a_platform_that_assigns_users_gets_no_uid_but_still_a_restricted_pod() -> None:
    """OpenShift's restricted SCC refuses a runAsUser outside the namespace's range and assigns one itself."""
    settings = OperatorSettings.from_env({"KASCADE_RUN_AS_USER": ""})
    assert settings.run_as_user is None
    for workload in _workloads(_example("chat-vllm-gpu.yaml"), settings):
        context = _pod(workload)["securityContext"]
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(context)
        assert restricted_violations(_pod(workload)) == []
    assert OperatorSettings.from_env({"KASCADE_RUN_AS_USER": "1000"}).run_as_user == 1000


# vLLM, Triton, torch's inductor and the HF hub write here at start; the vLLM image keeps them under /root.
VLLM_WRITES = (
    "HOME",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "VLLM_CACHE_ROOT",
    "TRITON_CACHE_DIR",
    "TORCHINDUCTOR_CACHE_DIR",
)


@pytest.mark.parametrize("uri", ["hf://Qwen/Qwen2.5-7B-Instruct", "pvc://weights/qwen", "s3://models/qwen"])
def test_vllm_as_a_non_root_user_finds_every_cache_and_config_root_on_a_writable_volume(uri: str) -> None:
    # The last tier: the student tier cannot be s3:// (a run could not load it).
    cascade = _with_tier(_example("chat-vllm-gpu.yaml"), -1, model={"uri": uri})
    pod = _pod(build_tier_deployment(cascade, cascade.spec.tiers[-1], SETTINGS))
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    scratch = {v["name"] for v in pod["volumes"] if "emptyDir" in v or "ephemeral" in v}
    writable = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in scratch and not m.get("readOnly")]
    wanted = [*VLLM_WRITES, *(["HF_HOME"] if uri.startswith("hf://") else [])]
    for name in wanted:
        assert any(posixpath.commonpath([env[name], root]) == root for root in writable), name
    # getpass.getuser() finds no passwd entry for the pod's UID; torch reads USER first.
    assert env["USER"]


# --- rollouts on a full GPU pool ---------------------------------------------------------------------------------


def _gpus_per_pod(deployment: dict[str, Any]) -> int:
    limits = deployment["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def _peak_gpus_during_rollout(deployment: dict[str, Any]) -> int:
    """The most GPUs the tier's pods hold at once while a rollout replaces them (the Deployment controller's
    bound: replicas + maxSurge pods; a percentage rounds up, its default is 25%)."""
    spec = deployment["spec"]
    replicas = spec["replicas"]
    strategy = spec.get("strategy", {"type": "RollingUpdate"})
    if strategy["type"] == "Recreate":
        surge = 0
    else:
        value = strategy.get("rollingUpdate", {}).get("maxSurge", "25%")
        surge = -(-replicas * int(value[:-1]) // 100) if isinstance(value, str) else value
    return (replicas + surge) * _gpus_per_pod(deployment)


@pytest.mark.parametrize("replicas", [1, 2, 5])
def test_a_gpu_tiers_rollout_needs_no_gpu_beyond_those_the_tier_holds(replicas: int) -> None:
    """A promotion changes the student tier's model: on a pool with exactly the tiers' GPUs it must complete."""
    cascade = _with_tier(_example("chat-vllm-gpu.yaml"), replicas=replicas)
    tier = cascade.spec.tiers[0]
    deployment = build_tier_deployment(cascade, tier, SETTINGS)
    assert _peak_gpus_during_rollout(deployment) == replicas * tier.resources.gpus
    # One pod at a time: the other replicas keep serving while one is replaced.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }


def test_cpu_tiers_and_the_router_keep_the_surging_rollout() -> None:
    """They hold no GPUs: a new pod starts before an old one stops, and nothing stops serving."""
    for path in EXAMPLE_FILES:
        for cascade in _cascades(path):
            for deployment in (c for c in build_children(cascade, SETTINGS) if c["kind"] == "Deployment"):
                if _gpus_per_pod(deployment) == 0:
                    assert "strategy" not in deployment["spec"], deployment["metadata"]["name"]


# --- the distillation Job -----------------------------------------------------------------------------------


def test_the_job_has_a_deadline_that_grows_with_the_training_it_asks_for() -> None:
    cascade = _example("chat-vllm-gpu.yaml")
    job = _distillation_job(cascade)
    run = Distillation.model_validate(build_distillation(cascade, SETTINGS, name="chat-d1", log_records=5000))
    assert job["spec"]["activeDeadlineSeconds"] == job_deadline_seconds(run.spec)
    longer = run.spec.training.model_copy(update={"steps": run.spec.training.steps * 10})
    longer_run = run.model_copy(update={"spec": run.spec.model_copy(update={"training": longer})})
    assert (
        build_distillation_job(longer_run, SETTINGS)["spec"]["activeDeadlineSeconds"]
        > job["spec"]["activeDeadlineSeconds"]
    )
    # The default run (200 steps of 8): three attempts of an hour of setup, 1,600 examples of 10 s each.
    assert job_deadline_seconds(run.spec.model_copy(update={"training": Training()})) == 3 * 3600 + 1600 * 10


def test_a_node_drain_does_not_use_up_the_jobs_retries_and_a_refusal_still_fails_it_at_once() -> None:
    rules = _distillation_job(_example("chat-vllm-gpu.yaml"))["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert {"action": "FailJob", "onExitCodes": {"containerName": "distill", "operator": "In", "values": [2]}} in rules
