"""The training loop, in the spirit of nanoGPT: one readable loop, periodic held-out evaluation, resumable checkpoints.

Step s trains on a batch fixed by (seed, s): the examples are shuffled per
epoch with a seeded generator, and whether the step is on-policy is drawn from
(seed, s). So a run resumed from a checkpoint at step s continues exactly
where it stopped, without saving a data iterator. A checkpoint
(`checkpoint/` in the output folder) holds the trainable weights
(safetensors), the optimizer's state, and `state.json` (step, settings
fingerprint, the figures so far).
"""

from __future__ import annotations

import math
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from kascade.api.distill_settings import DistillSettings
from kascade.api.loop import Training
from kascade.distillation.result import HeldOutFigures

CHECKPOINT = "checkpoint"


class TrainState(BaseModel):
    """Where a training is: saved in each checkpoint (`state.json`), resumed from it."""

    model_config = ConfigDict(ser_json_inf_nan="constants")  # a diverged loss is kept as it was

    step: int = 0
    fingerprint: str = ""
    before: HeldOutFigures = Field(default_factory=HeldOutFigures)
    history: list[HeldOutFigures] = Field(default_factory=list, description="Held-out figures along the way.")
    losses: list[float] = Field(default_factory=list, description="Training loss per step.")
    train_seconds: float = Field(default=0.0, description="Time in the loop, every run of a resumed training added up.")
    peak_memory_mib: float = Field(default=0.0, description="The largest peak of any of those runs.")


@dataclass
class Steps:
    """What the loop needs from the run: how to make a step's loss, and how to measure the student."""

    train_loss: Callable[[int, bool], torch.Tensor]  # (step, on_policy) -> loss
    held_out_figures: Callable[[], HeldOutFigures]


def batch_indices(count: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The examples of step `step`: consecutive slices of a seeded per-epoch permutation."""
    per_epoch = max(math.ceil(count / batch_size), 1)
    epoch, slot = divmod(step, per_epoch)
    order = list(range(count))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    chosen = order[slot * batch_size : (slot + 1) * batch_size]
    return chosen or order[:batch_size]


def is_on_policy(step: int, training: Training, seed: int) -> bool:
    return (
        training.on_policy_fraction > 0
        and random.Random(f"{seed}:policy:{step}").random() < training.on_policy_fraction
    )


def learning_rate(step: int, training: Training) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < training.warmup_steps:
        return training.learning_rate * (step + 1) / training.warmup_steps
    progress = (step - training.warmup_steps) / max(training.steps - training.warmup_steps, 1)
    return training.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def trainable(model: Any) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(model: Any, optimizer: torch.optim.Optimizer, state: TrainState, out: Path) -> None:
    """Written to a temporary folder and renamed: an interrupted save leaves the previous checkpoint whole."""
    from safetensors.torch import save_file

    final, temporary = out / CHECKPOINT, out / f".{CHECKPOINT}.tmp"
    temporary.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: p.detach().contiguous().cpu() for name, p in trainable(model).items()},
        temporary / "trainable.safetensors",
    )
    torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
    (temporary / "state.json").write_text(state.model_dump_json(indent=1))
    if final.exists():
        old = out / f".{CHECKPOINT}.old"
        final.rename(old)
        temporary.rename(final)
        for path in old.iterdir():
            path.unlink()
        old.rmdir()
    else:
        temporary.rename(final)


def load_checkpoint(model: Any, optimizer: torch.optim.Optimizer, out: Path, fingerprint: str) -> TrainState | None:
    """The saved state, into `model` and `optimizer`; None when there is none. A different run's checkpoint is refused."""
    from safetensors.torch import load_file

    folder = out / CHECKPOINT
    if not (folder / "state.json").exists():
        return None
    state = TrainState.model_validate_json((folder / "state.json").read_text())
    if state.fingerprint != fingerprint:
        raise ValueError(
            f"{out} holds a checkpoint of a run with other settings; pass another --out, or --no-resume to start over"
        )
    weights = load_file(folder / "trainable.safetensors")
    parameters = trainable(model)
    if set(weights) != set(parameters):
        raise ValueError(f"the checkpoint in {folder} does not fit this student (its trainable weights differ)")
    with torch.no_grad():
        for name, value in weights.items():
            parameters[name].copy_(value)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    return state


def train(
    model: Any,
    steps: Steps,
    settings: DistillSettings,
    state: TrainState,
    optimizer: torch.optim.Optimizer,
    *,
    progress: Callable[[int, float], None] = lambda step, loss: None,
) -> TrainState:
    """Run from `state.step` to `training.steps`; evaluate every `eval_every`; checkpoint at each evaluation."""
    training = settings.training
    model.train()
    for step in range(state.step, training.steps):
        started = time.monotonic()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, training)
        loss = steps.train_loss(step, is_on_policy(step, training, settings.seed))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(trainable(model).values()), 1.0)
        optimizer.step()
        state.losses.append(float(loss.detach()))
        state.step = step + 1
        state.train_seconds += time.monotonic() - started
        state.peak_memory_mib = max(state.peak_memory_mib, peak_memory_mib())
        progress(state.step, state.losses[-1])
        if state.step % training.eval_every == 0 or state.step == training.steps:
            state.history.append(steps.held_out_figures().model_copy(update={"step": state.step}))
            save_checkpoint(model, optimizer, state, settings.out)
    return state


def peak_memory_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
