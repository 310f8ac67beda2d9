"""Before the loop: the models loaded, the data encoded, the teacher's signal decided per example.

Which level each LM example trains at is decided here and reported:
- token level, from the log: the record's ids spell its answer with the
  student's tokenizer (and, with an in-process teacher, the two vocabularies
  are equal);
- token level, from the in-process teacher: the example had no usable ids,
  the vocabularies are equal, and the teacher scored the target once (cached);
- sequence level: the target text, tokenized by the student, with hard
  labels only (a teacher with another vocabulary, such as SmolLM2 → Qwen).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kascade.api.distill_settings import DistillSettings
from kascade.api.escalation_record import TeacherTokens
from kascade.distillation.batches import EncodedLm, encode_lm, ids_spell, shared_vocabulary
from kascade.distillation.examples import DistillDataError, DistillExample
from kascade.distillation.teacher import class_probabilities, score_targets
from kascade.runtime.engines.transformers.loading import LoadedModel


@dataclass
class LmData:
    train: list[DistillExample]
    held: list[DistillExample]
    train_encoded: list[EncodedLm]
    held_encoded: list[EncodedLm]
    levels: Counter[str] = field(default_factory=Counter)  # how many examples train at each level


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _logged_signal(example: DistillExample, student: LoadedModel, same_vocabulary: bool | None) -> TeacherTokens | None:
    if example.signal is None or same_vocabulary is False:
        return None
    if not ids_spell(student.tokenizer, example.signal.token_ids, example.target):
        return None
    return example.signal


def encode_lm_data(
    train: list[DistillExample],
    held: list[DistillExample],
    student: LoadedModel,
    teacher: LoadedModel | None,
    settings: DistillSettings,
) -> LmData:
    """Encode every example at the best level it allows; the in-process teacher fills in what the log lacks."""
    same = None if teacher is None else shared_vocabulary(student.tokenizer, teacher.tokenizer)
    data = LmData(train, held, [], [])
    need_teacher: list[tuple[list[EncodedLm], int, DistillExample]] = []
    levels: dict[str, str] = {}
    for examples, encoded in ((train, data.train_encoded), (held, data.held_encoded)):
        for example in examples:
            signal = _logged_signal(example, student, same)
            encoded.append(
                encode_lm(student.tokenizer, example, max_length=settings.training.max_length, signal=signal)
            )
            levels[example.id] = "token level (log)" if signal is not None else "sequence level"
            if signal is None and same:
                need_teacher.append((encoded, len(encoded) - 1, example))
    if need_teacher and teacher is not None:
        signals = score_targets(
            teacher.model,
            [x for _, _, x in need_teacher],
            [enc[i] for enc, i, _ in need_teacher],
            pad_id=pad_id(student.tokenizer),
            top_k=settings.training.teacher_top_k,
            cache=settings.out / "teacher-signal.jsonl",
            batch_size=settings.training.batch_size,
        )
        for encoded, index, example in need_teacher:
            old = encoded[index]
            encoded[index] = EncodedLm(old.prompt, old.answer, signals[example.id])
            levels[example.id] = "token level (teacher in process)"
    data.levels.update(levels[example.id] for example in train)
    return data


def label_ids_of(student: LoadedModel) -> dict[str, int]:
    return {str(label): int(index) for label, index in student.model.config.label2id.items()}


def prepare_classify(
    examples: list[DistillExample], student: LoadedModel, teacher: LoadedModel | None, settings: DistillSettings
) -> tuple[list[DistillExample], str]:
    """Check labels against the student's; with an in-process teacher, its probabilities and label as the targets."""
    labels = label_ids_of(student)
    unknown = sorted({label for e in examples for label in (e.target, e.reference) if label is not None} - set(labels))
    if unknown:
        raise DistillDataError(f"labels {unknown} are not the student's ({sorted(labels)})")
    if teacher is not None:
        if label_ids_of(teacher) != labels:
            raise DistillDataError(f"the teacher's labels {label_ids_of(teacher)} are not the student's {labels}")
        probs = class_probabilities(
            teacher.model,
            teacher.tokenizer,
            [e.prompt for e in examples],
            max_length=settings.training.max_length,
            batch_size=settings.training.batch_size,
        )
        names = {index: label for label, index in labels.items()}
        examples = [
            DistillExample(
                id=e.id,
                kind=e.kind,
                prompt=e.prompt,
                target=names[max(range(len(p)), key=p.__getitem__)],
                class_probs=p,
                reference=e.reference,
            )
            for e, p in zip(examples, probs, strict=True)
        ]
        return examples, "soft targets (teacher in process)"
    with_probs = [e for e in examples if e.class_probs is not None]
    if (
        with_probs
        and all(len(e.class_probs or ()) == len(labels) for e in with_probs)
        and len(with_probs) == len(examples)
    ):
        return examples, "soft targets (log)"
    return [
        DistillExample(id=e.id, kind=e.kind, prompt=e.prompt, target=e.target, reference=e.reference) for e in examples
    ], "hard labels"
