"""Engine `vllm`: the official vLLM OpenAI-compatible server image.

Only what is vLLM-specific lives here: the image, the command line and the
shared-memory volume. The pod around it (GPUs, probes, model volumes) is built
by `build_tier`, the same for every engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kascade.api.modelcascade import Task, Tier
from kascade.operator.settings import OperatorSettings

if TYPE_CHECKING:
    from kascade.operator.build_tier import ModelRef

# The API server module has been vLLM's OpenAI server in every release; naming
# it keeps the command independent of the image's ENTRYPOINT, which changed
# from this module to `vllm serve` over the releases.
COMMAND = ("python3", "-m", "vllm.entrypoints.openai.api_server")
SHM_VOLUME = "dshm"


def has_flag(args: Sequence[str], *flags: str) -> bool:
    """Whether `args` set one of `flags`, as `--flag value` or `--flag=value`."""
    return any(arg == flag or arg.startswith(f"{flag}=") for arg in args for flag in flags)


def model_args(model: ModelRef, tier: Tier) -> list[str]:
    """The arguments that name the model for `vllm serve`.

    hf://org/name@rev -> `--model org/name --revision rev` (vLLM downloads into
    HF_HOME); pvc:// -> the mounted folder; s3:// -> the URI as it is, streamed
    with the Run:ai model streamer (`--load-format runai_streamer`, unless the
    tier's engineArgs choose a load format; credentials come from the usual
    AWS_* environment, which this simplified builder does not wire: pass them
    with your own image or a mutating webhook). Anything else is passed as it is.
    """
    if model.scheme == "hf":
        args = ["--model", model.repo_id or model.uri]
        if model.revision:
            args += ["--revision", model.revision]
        return args
    args = ["--model", model.model_path or model.uri]
    if model.scheme == "s3" and not has_flag(tier.engine_args, "--load-format"):
        args += ["--load-format", "runai_streamer"]
    return args


def build_engine_container(
    tier: Tier, *, task: Task, model: ModelRef, settings: OperatorSettings
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The engine container (image, command, args, its own volume mounts) and the pod volumes it needs.

    Tasks chat and completion need nothing special; for task classify, choose
    vLLM's pooling runner in the tier's engineArgs (the flags differ between
    vLLM releases), e.g. `--task=classify` on older releases.
    """
    del task  # the same server serves every task; see the docstring for classify
    args = [
        *model_args(model, tier),
        "--served-model-name", tier.served_name,
        "--port", str(settings.engine_port),
    ]  # fmt: skip
    gpus = tier.resources.gpus
    if gpus > 1 and not has_flag(tier.engine_args, "--tensor-parallel-size", "-tp"):
        args += ["--tensor-parallel-size", str(gpus)]
    args += list(tier.engine_args)
    # PyTorch's tensor parallelism talks through /dev/shm; the container
    # default (64 MiB) is far too small.
    shm: dict[str, Any] = {"medium": "Memory"}
    if settings.shm_size:
        shm["sizeLimit"] = settings.shm_size
    container = {
        "name": "engine",
        "image": settings.vllm_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(COMMAND),
        "args": args,
        "volumeMounts": [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}],
    }
    return container, [{"name": SHM_VOLUME, "emptyDir": shm}]
