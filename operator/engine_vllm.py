"""Engine `vllm`: the official vLLM OpenAI-compatible server image.

Only what is vLLM-specific lives here: the image, the command line, the
shared-memory volume and a writable home. The pod around it (GPUs, probes,
model volumes, the restricted security contexts) is built by `build_tier`, the
same for every engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kascade.api.modelcascade import Task, Tier
from kascade.operator.settings import OperatorSettings

if TYPE_CHECKING:
    from kascade.operator.build_tier import ModelRef

# vLLM's own CLI, named explicitly so the command does not depend on the image's
# ENTRYPOINT. `python3 -m vllm.entrypoints.openai.api_server` (what this was)
# still runs in 0.33 but is deprecated there, "may be removed in a future
# release" (scripts/vllm-contract.sh fails on that warning).
COMMAND = ("vllm", "serve")
SHM_VOLUME = "dshm"
# The image runs as root and keeps its caches under /root; the pod runs as a
# non-root user (Pod Security "restricted"), for whom neither /root nor / is
# writable. vLLM, Triton, torch's inductor, FlashInfer and the HF hub all
# resolve their caches and config from HOME or XDG_*, so one emptyDir holds
# them (llm-d #1430: unwritable /.config and /.triton kill the engine's start).
HOME_VOLUME = "home"
HOME_DIR = "/home/kascade"


def home_env() -> list[dict[str, str]]:
    """HOME and the cache and config roots that vLLM and its compilers write, all under the home volume."""
    cache, config = f"{HOME_DIR}/.cache", f"{HOME_DIR}/.config"
    return [
        {"name": "HOME", "value": HOME_DIR},
        # getpass.getuser() reads USER before the passwd file, which has no entry
        # for the pod's UID; older torch releases raise KeyError without it (kserve #5666).
        {"name": "USER", "value": "kascade"},
        {"name": "XDG_CACHE_HOME", "value": cache},
        {"name": "XDG_CONFIG_HOME", "value": config},
        {"name": "VLLM_CACHE_ROOT", "value": f"{cache}/vllm"},
        {"name": "TRITON_CACHE_DIR", "value": f"{HOME_DIR}/.triton/cache"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": f"{cache}/torchinductor"},
    ]


def has_flag(args: Sequence[str], *flags: str) -> bool:
    """Whether `args` set one of `flags`, as `--flag value` or `--flag=value`."""
    return any(arg == flag or arg.startswith(f"{flag}=") for arg in args for flag in flags)


def model_args(model: ModelRef, tier: Tier) -> list[str]:
    """The arguments that name the model for `vllm serve`.

    hf://org/name@rev -> `--model org/name --revision rev` (vLLM downloads into
    HF_HOME); pvc:// -> the mounted folder; s3:// -> the URI as it is, streamed
    with the Run:ai model streamer (`--load-format runai_streamer`, unless the
    tier's engineArgs choose a load format; credentials come from the usual
    AWS_* environment, which the API has no field for yet: pass them with your
    own image or a mutating webhook). Anything else is passed as it is.
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
        "--served-model-name",
        tier.served_name,
        "--port",
        str(settings.engine_port),
    ]
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
        "env": home_env(),
        "volumeMounts": [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}, {"name": HOME_VOLUME, "mountPath": HOME_DIR}],
    }
    # No size limit on the home: torch.compile and Triton caches grow with the
    # model, and an emptyDir past its limit evicts the pod.
    return container, [{"name": SHM_VOLUME, "emptyDir": shm}, {"name": HOME_VOLUME, "emptyDir": {}}]
