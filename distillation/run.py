"""`kascade distill`: a student distilled from an escalation log or a dataset, saved as a model a tier can serve.

The output folder holds the model (safetensors, LoRA merged in) and its
tokenizer, `provenance.json` (the run's `DistillResult`: data, settings,
levels, steps, figures before and after, the gate's verdict, time and memory),
the resumable `checkpoint/`, and the in-process teacher's cached signal. Point
a tier's `model.uri` at the folder to serve it.
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from kascade.api.distill_settings import DistillSettings
from kascade.api.loop import Training
from kascade.api.times import format_time, utc_now
from kascade.distillation.batches import EncodedLm, collate_classify, collate_lm
from kascade.distillation.evaluate import classify_metrics, lm_metrics
from kascade.distillation.examples import DistillDataError, load_examples, sample, split
from kascade.distillation.gate import promotion_gate
from kascade.distillation.held_out_judge import HeldOutJudge, held_out_judge
from kascade.distillation.objective import (
    classify_loss,
    lm_loss,
    on_policy_loss,
    sample_answers,
    scored_sample_loss,
)
from kascade.distillation.pre_route_refit import refit_from_log
from kascade.distillation.preparation import encode_lm_data, label_ids_of, pad_id, prepare_classify
from kascade.distillation.result import DistillResult, HeldOutFigures, PreRouteRefit, RunData
from kascade.distillation.teacher_server import TeacherServer
from kascade.distillation.trainer import (
    Steps,
    TrainState,
    batch_indices,
    load_checkpoint,
    peak_memory_mib,
    train,
    trainable,
)
from kascade.runtime.engines.transformers.loading import LoadedModel, load_model, without_progress_bars


def _load(uri: str, task: str, settings: DistillSettings) -> LoadedModel:
    from kascade.runtime.models.files import resolve_model_uri

    with without_progress_bars():
        loaded = load_model(resolve_model_uri(uri), task=task, device=settings.device, dtype=torch.float32)  # type: ignore[arg-type]
    return loaded


def _with_lora(student: LoadedModel, training: Training) -> Any:
    if not training.lora:
        return student.model
    from peft import LoraConfig, TaskType, get_peft_model

    task = TaskType.SEQ_CLS if student.task == "classify" else TaskType.CAUSAL_LM
    config = LoraConfig(
        task_type=task,
        r=training.lora_rank,
        lora_alpha=2 * training.lora_rank,
        lora_dropout=0.0,
        target_modules="all-linear",
    )
    with warnings.catch_warnings():
        # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing`; not our call, and not the user's.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(student.model, config)


def _lm_steps(
    model: Any,
    student: LoadedModel,
    teacher: LoadedModel | None,
    data: Any,
    settings: DistillSettings,
    judge: HeldOutJudge,
) -> Steps:
    pad, training = pad_id(student.tokenizer), settings.training
    server = None
    if settings.teacher_url is not None and teacher is None:
        assert settings.teacher_model is not None
        server = TeacherServer(
            settings.teacher_url,
            settings.teacher_model,
            top_k=training.teacher_top_k,
            student_tokenizer=student.tokenizer,
        )

    def train_loss(step: int, on_policy: bool) -> torch.Tensor:
        chosen = [
            data.train_encoded[i]
            for i in batch_indices(len(data.train_encoded), training.batch_size, step, settings.seed)
        ]
        if not on_policy:
            return lm_loss(model, collate_lm(chosen, pad).to(student.device), training)
        sampled = sample_answers(
            model,
            student.tokenizer,
            [e.prompt for e in chosen],
            max_new_tokens=training.max_new_tokens,
            seed=settings.seed * 100_003 + step,
        )
        if teacher is not None:
            return on_policy_loss(model, teacher.model, collate_lm(sampled, pad).to(student.device), training)
        assert server is not None
        scored = [
            EncodedLm(e.prompt, e.answer, signal) for e, signal in zip(sampled, server.signals(sampled), strict=True)
        ]
        return scored_sample_loss(model, collate_lm(scored, pad).to(student.device), training)

    def figures() -> HeldOutFigures:
        return lm_metrics(model, student.tokenizer, data.held, data.held_encoded, settings, pad, judge)

    return Steps(train_loss, figures)


def _classify_steps(model: Any, student: LoadedModel, train_set: list, held: list, settings: DistillSettings) -> Steps:
    labels, training = label_ids_of(student), settings.training

    def train_loss(step: int, on_policy: bool) -> torch.Tensor:
        chosen = [train_set[i] for i in batch_indices(len(train_set), training.batch_size, step, settings.seed)]
        batch = collate_classify(student.tokenizer, chosen, labels, max_length=training.max_length)
        return classify_loss(model, batch.to(student.device), training)

    return Steps(train_loss, lambda: classify_metrics(model, student.tokenizer, held, labels, settings))


def _prepare(settings: DistillSettings, say: Callable[[str], None]) -> tuple[LoadedModel, Any, Steps, RunData]:
    """Data, models and the step functions; what the report says about the data."""
    examples, source = load_examples(settings.data)
    examples = sample(examples, settings.limit, settings.seed)
    if not examples:
        raise DistillDataError(f"{settings.data}: no examples")
    kinds = {e.kind for e in examples}
    task = "classify" if kinds == {"classify"} else "generate"
    if task == "generate" and "classify" in kinds:
        raise DistillDataError("the data mixes classify records with generated answers; distil one task at a time")
    say(f"{len(examples)} examples from {source}; loading the student {settings.student}")
    student = _load(settings.student, task, settings)
    teacher = _load(settings.teacher, task, settings) if settings.teacher else None
    if task == "classify":
        examples, level = prepare_classify(examples, student, teacher, settings)
        train_set, held = split(examples, settings.training.held_out)
        model = _with_lora(student, settings.training)
        steps = _classify_steps(model, student, train_set, held, settings)
        levels = {level: len(train_set)}
    else:
        train_set, held = split(examples, settings.training.held_out)
        data = encode_lm_data(train_set, held, student, teacher, settings)
        model = _with_lora(student, settings.training)
        steps = _lm_steps(model, student, teacher, data, settings, held_out_judge(settings, say))
        levels = dict(data.levels)
    if not train_set:
        raise DistillDataError(
            f"all {len(examples)} examples fell in the held-out share ({settings.training.held_out}); lower --held-out"
        )
    about = RunData(
        source=source, examples=len(examples), train=len(train_set), held_out=len(held), task=task, levels=levels
    )
    return student, model, steps, about


def run_distill(
    settings: DistillSettings,
    *,
    resume: bool = True,
    say: Callable[[str], None] = print,
    progress: Callable[[int, float], None] = lambda step, loss: None,
) -> DistillResult:
    """Train, save the student and its provenance (the result, written once as `provenance.json`); return it."""
    started = time.monotonic()
    torch.manual_seed(settings.seed)
    settings.out.mkdir(parents=True, exist_ok=True)
    student, model, steps, about = _prepare(settings, say)
    say(f"training at: {', '.join(f'{level} {count}' for level, count in about.levels.items())}")
    optimizer = torch.optim.AdamW(list(trainable(model).values()), lr=settings.training.learning_rate, weight_decay=0.0)
    state = load_checkpoint(model, optimizer, settings.out, settings.fingerprint()) if resume else None
    if state is None:
        state = TrainState(fingerprint=settings.fingerprint())
        say("measuring the student on the held-out examples before training")
        state.before = steps.held_out_figures()
    else:
        say(f"resuming at step {state.step} of {settings.training.steps}")
    steps = Steps(steps.train_loss, _saying(steps.held_out_figures, state, say))
    state = train(model, steps, settings, state, optimizer, progress=progress)
    _save_model(model, student, settings)
    refit = refit_from_log(settings)
    if refit is not None:
        say(refit.message)
    result = _result(settings, about, state, time.monotonic() - started, refit)
    result.write(settings.out)
    return result


def _saying(
    measure: Callable[[], HeldOutFigures], state: TrainState, say: Callable[[str], None]
) -> Callable[[], HeldOutFigures]:
    """`measure`, saying what it measured at the training's step."""

    def measured_and_said() -> HeldOutFigures:
        figures = measure()
        said = figures.model_dump(exclude_none=True, exclude={"step"})
        say(
            f"step {state.step}: held out "
            + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in said.items())
        )
        return figures

    return measured_and_said


def _save_model(model: Any, student: LoadedModel, settings: DistillSettings) -> None:
    final = model.merge_and_unload() if settings.training.lora else model
    final.eval()
    final.save_pretrained(settings.out)
    student.tokenizer.save_pretrained(settings.out)
    config_file = settings.out / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(with_legacy_rope(config), indent=2, sort_keys=True) + "\n")


def with_legacy_rope(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config.json that transformers 4 reads as the same model transformers 5 does.

    Transformers 5 writes the rotary embedding only as `rope_parameters`
    ({"rope_type", "rope_theta", and the scaling's own keys}); transformers 4,
    which older vLLM images bundle (v0.11.0 among them), reads `rope_theta` and `rope_scaling`
    and, finding neither, falls back to rope_theta 10000: a different model that
    loads without an error. So the legacy keys are written too, with the same
    values: `rope_theta`, and `rope_scaling` (the parameters less rope_theta)
    unless the rope type is the default one, which transformers 4 spells as no
    `rope_scaling`. Per-layer-type parameters (`{"full_attention": {...}, ...}`)
    have no transformers 4 spelling in common; they are left as they are.
    """
    parameters = config.get("rope_parameters")
    if not isinstance(parameters, dict) or "rope_theta" not in parameters:
        return config
    legacy = dict(config)
    legacy["rope_theta"] = parameters["rope_theta"]
    if "partial_rotary_factor" in parameters:
        legacy.setdefault("partial_rotary_factor", parameters["partial_rotary_factor"])
    scaling = {key: value for key, value in parameters.items() if key not in ("rope_theta", "partial_rotary_factor")}
    if scaling.get("rope_type", "default") != "default":
        legacy["rope_scaling"] = scaling
    else:
        legacy.pop("rope_scaling", None)
    return legacy


def _start_end(losses: list[float]) -> list[float]:
    if not losses:
        return []
    width = max(len(losses) // 10, 1)
    return [sum(losses[:width]) / width, sum(losses[-width:]) / width]


def _result(
    settings: DistillSettings, about: RunData, state: TrainState, seconds: float, refit: PreRouteRefit | None
) -> DistillResult:
    """The run's result; the gate's verdict covers the refitted pre-route score too (written only when certified)."""
    after = state.history[-1] if state.history else HeldOutFigures()
    gate = promotion_gate(state.before, after, settings.gate)
    return DistillResult(
        written_at=format_time(utc_now()),
        settings=settings,
        data=about,
        steps=state.step,
        before=state.before,
        after=after,
        gate=gate if refit is None else gate.model_copy(update={"pre_route": refit.message}),
        pre_route=refit,
        history=state.history,
        loss_start_end=_start_end(state.losses),
        seconds=round(seconds, 1),
        train_seconds=round(state.train_seconds, 1),
        peak_memory_mib=round(max(state.peak_memory_mib, peak_memory_mib()), 1),
        machine=f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    )
