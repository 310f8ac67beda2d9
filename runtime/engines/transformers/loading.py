"""Loading a transformers folder onto a device: for serving (the engine) and for training (distillation).

Everything a user can get wrong (the path, the task, the device) fails with a
`ModelLoadError` whose message says what to do. torch and transformers are
imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Task = Literal["generate", "classify"]
TASKS: tuple[Task, ...] = ("generate", "classify")
_FALLBACK_CONTEXT_LENGTH = 2048  # when neither the config nor the tokenizer says


class ModelLoadError(Exception):
    """The path holds no model this engine can serve; the message says what to do."""


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode on its device, with what serving and training need to know about it."""

    model: Any  # a PreTrainedModel: *ForCausalLM for "generate", *ForSequenceClassification for "classify"
    tokenizer: Any
    task: Task
    device: Any  # torch.device
    max_model_len: int  # the context length: prompt plus generated tokens
    stop_token_ids: frozenset[int]  # generation ends at any of these (EOS from every source)


@contextlib.contextmanager
def without_progress_bars() -> Iterator[None]:
    """transformers' own progress bars off within the block, as they were after it.

    A spinner or Kascade's own progress is on screen while models load, and in
    a server's log the bars are lines of carriage returns.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_causal_lm(model_path: str | Path, *, device: str = "auto", dtype: Any = None) -> LoadedModel:
    """A causal LM (chat and completions); see `load_model`."""
    return load_model(model_path, task="generate", device=device, dtype=dtype)


def load_classifier(model_path: str | Path, *, device: str = "auto", dtype: Any = None) -> LoadedModel:
    """A sequence classifier (vLLM's classify API); see `load_model`."""
    return load_model(model_path, task="classify", device=device, dtype=dtype)


def load_model(
    model_path: str | Path, *, task: Task = "generate", device: str = "auto", dtype: Any = None
) -> LoadedModel:
    """Load a folder written by `save_pretrained`; raises ModelLoadError with a message for the user.

    `device`: cpu, cuda, cuda:N, or auto (a GPU when one is visible).
    `dtype`: None picks float32 on CPU (half precision is slow there) and the
    checkpoint's own dtype on GPU; a torch dtype or its name ("bfloat16") is used as given.
    """
    path = _checked_folder(model_path, task)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the model config in {path}: {exc}") from exc
    _check_task_matches(config, task, path)
    torch_device = resolve_device(device)
    auto_class = AutoModelForCausalLM if task == "generate" else AutoModelForSequenceClassification
    try:
        model = auto_class.from_pretrained(path, dtype=resolve_dtype(dtype, torch_device)).to(torch_device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the model in {path}: {exc}") from exc
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        task=task,
        device=torch_device,
        max_model_len=context_length(config, tokenizer),
        stop_token_ids=stop_token_ids(model, config, tokenizer),
    )


def _checked_folder(model_path: str | Path, task: str) -> Path:
    path = Path(model_path).expanduser()
    if task not in TASKS:
        raise ModelLoadError(f"unknown task {task!r}: use 'generate' (chat and completions) or 'classify'")
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} does not hold a transformers model (no config.json); "
            "point --model at a folder written by save_pretrained"
        )
    return path


def resolve_device(device: str) -> Any:
    """`auto` -> the first GPU when one is visible, else the CPU; anything else as torch reads it."""
    import torch

    try:
        torch_device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from exc
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch_device


def resolve_dtype(dtype: Any, device: Any) -> Any:
    import torch

    if dtype is None:
        return torch.float32 if device.type == "cpu" else "auto"
    if isinstance(dtype, str) and dtype != "auto":
        return getattr(torch, dtype)
    return dtype


def context_length(config: Any, tokenizer: Any) -> int:
    """The model's context length: its position embeddings, else the tokenizer's limit when it is a real one."""
    length = getattr(config, "max_position_embeddings", None)
    if not length:
        tokenizer_limit = getattr(tokenizer, "model_max_length", None) or 0
        # Tokenizers without a limit report a huge sentinel (int(1e30)).
        length = tokenizer_limit if 0 < tokenizer_limit < 1_000_000 else _FALLBACK_CONTEXT_LENGTH
    return int(length)


def stop_token_ids(model: Any, config: Any, tokenizer: Any) -> frozenset[int]:
    """Every EOS id the generation config, the model config and the tokenizer name (chat models often differ)."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def _check_task_matches(config: Any, task: Task, path: Path) -> None:
    architectures = list(getattr(config, "architectures", None) or [])
    if not architectures:
        return  # nothing to go by; the Auto class will try
    classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    if task == "classify" and not classifier:
        raise ModelLoadError(
            f"{path} holds {', '.join(architectures)}, not a sequence classifier; "
            "serve it with --task generate, or give a model saved as *ForSequenceClassification"
        )
    if task == "generate" and classifier:
        raise ModelLoadError(
            f"{path} holds a sequence classifier ({', '.join(architectures)}); serve it with --task classify"
        )
