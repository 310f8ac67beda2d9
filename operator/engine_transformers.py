"""Engine `transformers`: Kascade's own model server (`kascade serve`) in the runtime image.

It speaks vLLM's wire format (logprobs and the classify API included), on CPUs
or GPUs, so a tier can run without vLLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kascade.api.modelcascade import Task, Tier
from kascade.operator.settings import OperatorSettings

if TYPE_CHECKING:
    from kascade.operator.build_tier import ModelRef

COMMAND = ("kascade", "serve")


def model_args(model: ModelRef) -> list[str]:
    """`kascade serve --model`: a folder (pvc:// mounts, local paths) or a URI it resolves itself.

    `kascade serve` resolves hf://org/name@rev (into HF_HOME) and pkg://NAME
    (into KASCADE_CACHE_DIR) through the runtime's model catalog.
    """
    return ["--model", model.model_path or model.uri]


def build_engine_container(
    tier: Tier, *, task: Task, model: ModelRef, settings: OperatorSettings
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The engine container (image, command, args) and the pod volumes it needs (none)."""
    args = [
        *model_args(model),
        # `kascade serve` binds the loopback by default; a pod must listen on all addresses.
        "--host",
        "0.0.0.0",
        "--port",
        str(settings.engine_port),
        "--served-model-name",
        tier.served_name,
        "--task",
        "classify" if task is Task.classify else "generate",
        "--device",
        "cuda" if tier.resources.gpus > 0 else "cpu",
        *tier.engine_args,
    ]
    container = {
        "name": "engine",
        # A GPU tier needs the CUDA build of the runtime image; the CPU build's torch cannot see the GPU.
        "image": settings.runtime_gpu_image if tier.resources.gpus > 0 else settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(COMMAND),
        "args": args,
    }
    return container, []
