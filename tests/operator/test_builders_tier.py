"""A tier's Deployment and Service: engines, GPUs, scheduling, model volumes, probes."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from kascade.api.modelcascade import ModelCascade, Tier
from kascade.operator.build_tier import (
    build_tier_deployment,
    build_tier_service,
    resolve_model,
    tier_service_url,
)
from kascade.operator.builders import build_children
from kascade.operator.labels import TIER_LABEL, selector_labels
from kascade.operator.settings import OperatorSettings

SETTINGS = OperatorSettings()


def make_cascade(
    *tiers: dict[str, Any], name: str = "chat", namespace: str | None = "llm", task: str = "chat"
) -> ModelCascade:
    """A cascade of `tiers`; every tier but the last gets an accept rule."""
    specs = []
    for index, tier in enumerate(tiers):
        tier = dict(tier)
        if index < len(tiers) - 1:
            tier.setdefault(
                "accept", {"method": "maxProb" if task == "classify" else "geometricMean", "threshold": 0.5}
            )
        specs.append(tier)
    return ModelCascade.model_validate(
        {
            "apiVersion": "kascade.dev/v1alpha1",
            "kind": "ModelCascade",
            "metadata": {"name": name, **({"namespace": namespace} if namespace else {})},
            "spec": {"task": task, "tiers": specs},
        }
    )


def single(tier: dict[str, Any], **kwargs: Any) -> tuple[ModelCascade, Tier]:
    cascade = make_cascade(tier, **kwargs)
    return cascade, cascade.spec.tiers[0]


def pod_of(cascade: ModelCascade, tier: Tier, settings: OperatorSettings = SETTINGS) -> dict[str, Any]:
    deployment = build_tier_deployment(cascade, tier, settings)
    kubernetes_validate.validate(deployment, "1.30.0", strict=True)
    return deployment["spec"]["template"]["spec"]


def container_of(cascade: ModelCascade, tier: Tier, settings: OperatorSettings = SETTINGS) -> dict[str, Any]:
    return pod_of(cascade, tier, settings)["containers"][0]


def test_vllm_runs_the_pinned_official_image_with_model_name_and_port() -> None:
    cascade, tier = single({"name": "small", "model": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct", "servedName": "qwen"}})
    container = container_of(cascade, tier)
    assert container["image"] == "vllm/vllm-openai:v0.33.0"
    assert container["command"] == ["vllm", "serve"]
    args = container["args"]
    assert args[args.index("--model") + 1] == "Qwen/Qwen2.5-7B-Instruct"
    assert args[args.index("--served-model-name") + 1] == "qwen"
    assert args[args.index("--port") + 1] == "8000"
    assert "--tensor-parallel-size" not in args


def test_served_name_defaults_to_the_tier_name_and_hf_revision_becomes_revision() -> None:
    cascade, tier = single({"name": "small", "model": {"uri": "hf://org/model@v2"}})
    args = container_of(cascade, tier)["args"]
    assert args[args.index("--served-model-name") + 1] == "small"
    assert args[args.index("--model") + 1] == "org/model"
    assert args[args.index("--revision") + 1] == "v2"


def test_multi_gpu_vllm_gets_tensor_parallelism_and_engine_args_last() -> None:
    cascade, tier = single(
        {
            "name": "large",
            "model": {"uri": "hf://a/b"},
            "resources": {"gpus": 4},
            "engineArgs": ["--max-model-len=8192"],
        }
    )
    args = container_of(cascade, tier)["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    assert args[-1] == "--max-model-len=8192"


@pytest.mark.parametrize("flag", ["--tensor-parallel-size=2", "-tp"])
def test_tensor_parallelism_in_engine_args_wins(flag: str) -> None:
    extra = [flag] if "=" in flag else [flag, "2"]
    cascade, tier = single(
        {"name": "large", "model": {"uri": "hf://a/b"}, "resources": {"gpus": 4}, "engineArgs": extra}
    )
    args = container_of(cascade, tier)["args"]
    assert "--tensor-parallel-size" not in args
    assert args[-len(extra) :] == extra


def test_gpu_tier_requests_gpus_selects_the_product_and_tolerates_the_taint() -> None:
    cascade, tier = single(
        {
            "name": "large",
            "model": {"uri": "hf://a/b"},
            "resources": {"gpus": 2, "gpuType": "NVIDIA-H100-80GB-HBM3", "cpu": 16, "memory": "128Gi"},
            "nodeSelector": {"topology.kubernetes.io/zone": "us-east-1a"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"},
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 60,
                },
            ],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}
                        ]
                    }
                }
            },
        }
    )
    pod = pod_of(cascade, tier)
    resources = pod["containers"][0]["resources"]
    assert resources["limits"] == {"nvidia.com/gpu": "2"}
    assert resources["requests"] == {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "2"}
    assert pod["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "topology.kubernetes.io/zone": "us-east-1a",
    }
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
    ]
    assert pod["affinity"] == tier.affinity


def test_explicit_node_selector_wins_over_gpu_type_and_operator_default() -> None:
    settings = OperatorSettings(tier_node_selector={"pool": "inference", "nvidia.com/gpu.product": "X"})
    cascade, tier = single(
        {
            "name": "t",
            "model": {"uri": "hf://a/b"},
            "resources": {"gpus": 1, "gpuType": "NVIDIA-L4"},
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4-custom"},
        }
    )
    assert pod_of(cascade, tier, settings)["nodeSelector"] == {
        "pool": "inference",
        "nvidia.com/gpu.product": "NVIDIA-L4-custom",
    }


def test_cpu_tier_has_no_gpu_resources_tolerations_or_product_selector() -> None:
    cascade, tier = single(
        {"name": "cpu", "engine": "transformers", "model": {"uri": "pvc://models/m"}, "resources": {"cpu": "2"}}
    )
    pod = pod_of(cascade, tier)
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "2"}}
    assert "tolerations" not in pod and "nodeSelector" not in pod


def test_pvc_model_is_mounted_read_only_and_the_engine_reads_the_folder() -> None:
    cascade, tier = single({"name": "s", "model": {"uri": "pvc://weights/org/model-7b"}, "resources": {"gpus": 1}})
    pod = pod_of(cascade, tier)
    container = pod["containers"][0]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod["volumes"]
    assert {"name": "model", "mountPath": "/mnt/models", "readOnly": True} in container["volumeMounts"]
    assert container["args"][container["args"].index("--model") + 1] == "/mnt/models/org/model-7b"
    assert not any(v["name"] == "model-cache" for v in pod["volumes"])


def test_hf_model_gets_a_download_cache_and_the_hub_token_from_its_secret() -> None:
    cascade, tier = single(
        {
            "name": "s",
            "model": {"uri": "hf://meta-llama/Llama-3.1-8B", "hubTokenSecret": {"name": "hf", "key": "token"}},
            "resources": {"gpus": 1},
        }
    )
    pod = pod_of(cascade, tier)
    container = pod["containers"][0]
    assert {"name": "model-cache", "emptyDir": {"sizeLimit": "200Gi"}} in pod["volumes"]
    assert {"name": "model-cache", "mountPath": "/cache"} in container["volumeMounts"]
    assert {"name": "HF_HOME", "value": "/cache/huggingface"} in container["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in container["env"]


def test_download_cache_can_be_an_ephemeral_volume_of_a_storage_class() -> None:
    settings = OperatorSettings(model_cache_storage_class="fast-ssd", model_cache_size="500Gi")
    cascade, tier = single({"name": "s", "model": {"uri": "hf://a/b"}})
    volume = next(v for v in pod_of(cascade, tier, settings)["volumes"] if v["name"] == "model-cache")
    claim = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["storageClassName"] == "fast-ssd"
    assert claim["resources"]["requests"]["storage"] == "500Gi"


def test_s3_model_is_streamed_by_vllm() -> None:
    cascade, tier = single({"name": "s", "model": {"uri": "s3://bucket/models/m"}, "resources": {"gpus": 1}})
    args = container_of(cascade, tier)["args"]
    assert args[args.index("--model") + 1] == "s3://bucket/models/m"
    assert args[args.index("--load-format") + 1] == "runai_streamer"


def test_vllm_gets_a_memory_backed_dev_shm() -> None:
    cascade, tier = single({"name": "s", "model": {"uri": "hf://a/b"}, "resources": {"gpus": 2}})
    pod = pod_of(cascade, tier)
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_probes_hit_the_engine_health_endpoint_with_a_long_startup_budget() -> None:
    cascade, tier = single({"name": "s", "model": {"uri": "hf://a/b"}})
    container = container_of(cascade, tier)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


def test_transformers_engine_runs_kascade_serve_on_all_addresses() -> None:
    cascade = make_cascade(
        {"name": "minilm", "engine": "transformers", "model": {"uri": "pvc://c/minilm"}},
        {"name": "mpnet", "engine": "transformers", "model": {"uri": "hf://org/mpnet"}, "resources": {"gpus": 1}},
        task="classify",
    )
    cpu, gpu = (container_of(cascade, tier) for tier in cascade.spec.tiers)
    assert cpu["image"] == SETTINGS.runtime_image
    assert cpu["image"].startswith("ghcr.io/kascade-dev/kascade-runtime:")
    assert cpu["command"] == ["kascade", "serve"]
    args = cpu["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert args[args.index("--model") + 1] == "/mnt/models/minilm"
    assert args[args.index("--task") + 1] == "classify"
    assert args[args.index("--device") + 1] == "cpu"
    assert args[args.index("--served-model-name") + 1] == "minilm"
    # kascade serve resolves hf:// itself, into the cache.
    assert gpu["args"][gpu["args"].index("--model") + 1] == "hf://org/mpnet"
    assert gpu["args"][gpu["args"].index("--device") + 1] == "cuda"
    assert gpu["image"] == SETTINGS.runtime_gpu_image == f"{SETTINGS.runtime_image}-cuda"  # the CUDA build
    assert {"name": "KASCADE_CACHE_DIR", "value": "/cache/kascade"} in gpu["env"]


def test_external_tier_deploys_nothing() -> None:
    cascade = make_cascade(
        {"name": "small", "model": {"uri": "hf://a/b"}},
        {"name": "frontier", "engine": "external", "model": {"uri": "https://api.example.com/v1"}},
    )
    external = cascade.spec.tiers[1]
    with pytest.raises(ValueError, match="deploys no pods"):
        build_tier_deployment(cascade, external, SETTINGS)
    with pytest.raises(ValueError, match="deploys no pods"):
        build_tier_service(cascade, external, SETTINGS)
    names = {c["metadata"]["name"] for c in build_children(cascade, SETTINGS)}
    assert "chat-frontier" not in names and "chat-small" in names
    assert tier_service_url(cascade, external, SETTINGS) == "https://api.example.com/v1"


def test_service_selects_exactly_the_tier_pods() -> None:
    cascade, tier = single({"name": "small", "model": {"uri": "hf://a/b"}})
    service = build_tier_service(cascade, tier, SETTINGS)
    deployment = build_tier_deployment(cascade, tier, SETTINGS)
    kubernetes_validate.validate(service, "1.30.0", strict=True)
    assert service["metadata"]["name"] == deployment["metadata"]["name"] == "chat-small"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector_labels("chat", "tier", "small")
    assert service["spec"]["selector"][TIER_LABEL] == "small"
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert tier_service_url(cascade, tier, SETTINGS) == "http://chat-small.llm.svc:8000/v1"


def test_replicas_and_missing_namespace() -> None:
    cascade, tier = single({"name": "s", "model": {"uri": "hf://a/b"}, "replicas": 3}, namespace=None)
    deployment = build_tier_deployment(cascade, tier, SETTINGS)
    assert deployment["spec"]["replicas"] == 3
    assert deployment["metadata"]["namespace"] == "default"


def test_changing_the_model_changes_the_spec_hash_but_not_the_selector() -> None:
    before, tier_before = single({"name": "s", "model": {"uri": "hf://a/b"}})
    after, tier_after = single({"name": "s", "model": {"uri": "hf://a/c"}})
    one = build_tier_deployment(before, tier_before, SETTINGS)
    two = build_tier_deployment(after, tier_after, SETTINGS)
    assert one["metadata"]["annotations"] != two["metadata"]["annotations"]
    assert one["spec"]["selector"] == two["spec"]["selector"]


@pytest.mark.parametrize(
    ("uri", "scheme", "model_path"),
    [
        ("pvc://claim", "pvc", "/mnt/models"),
        ("pvc://claim/a/b/", "pvc", "/mnt/models/a/b"),
        ("file:///srv/model", "path", "/srv/model"),
        ("/srv/model", "path", "/srv/model"),
        ("hf://org/name", "hf", None),
        ("s3://b/k", "s3", None),
        ("pkg://smollm2-135m-instruct", "pkg", None),
    ],
)
def test_resolve_model(uri: str, scheme: str, model_path: str | None) -> None:
    ref = resolve_model(uri, SETTINGS)
    assert (ref.scheme, ref.model_path) == (scheme, model_path)
