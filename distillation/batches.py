"""Examples to tensors with the student's tokenizer: token-level and sequence-level LM batches, classifier batches.

LM batches are unshifted: `labels[b, t]` is the answer token at position t
(IGNORE_INDEX on the prompt and the padding), and the teacher's top-k at t is
its distribution over that token; the loss compares them with the student's
logits at t − 1.

Token level needs the teacher's ids to mean the same tokens to the student:
`shared_vocabulary` compares the two vocabularies (not the names), and
`ids_spell` checks, record by record, that the ids decode to the teacher's
answer with the student's tokenizer. An example that fails falls back to the
sequence level: its answer text, tokenized by the student, is the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kascade.api.escalation_record import TeacherTokens
from kascade.distillation.examples import DistillExample
from kascade.distillation.losses import IGNORE_INDEX


def shared_vocabulary(student_tokenizer: Any, teacher_tokenizer: Any) -> bool:
    """Whether the two tokenizers map every token string to the same id."""
    return student_tokenizer.get_vocab() == teacher_tokenizer.get_vocab()


def ids_spell(tokenizer: Any, token_ids: Sequence[int], text: str) -> bool:
    """Whether `token_ids` decode (special tokens skipped) to `text` with this tokenizer."""
    if any(i < 0 or i >= len(tokenizer) for i in token_ids):
        return False
    return tokenizer.decode(list(token_ids), skip_special_tokens=True).strip() == text.strip()


def prompt_ids(tokenizer: Any, example: DistillExample) -> list[int]:
    if example.kind == "chat":
        messages = [{"role": m.get("role", "user"), "content": m.get("content") or ""} for m in example.prompt]
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded)
    return list(tokenizer(example.prompt, add_special_tokens=True)["input_ids"])


@dataclass(frozen=True)
class EncodedLm:
    prompt: list[int]
    answer: list[int]
    signal: TeacherTokens | None  # aligned with `answer` when token level

    @property
    def token_level(self) -> bool:
        return self.signal is not None


def encode_lm(tokenizer: Any, example: DistillExample, *, max_length: int, signal: TeacherTokens | None) -> EncodedLm:
    """Prompt and answer ids; the teacher's ids (token level) when `signal` is given, else the target tokenized."""
    prompt = prompt_ids(tokenizer, example)
    if signal is not None:
        answer = list(signal.token_ids)
    else:
        answer = list(tokenizer(example.target, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            answer.append(tokenizer.eos_token_id)
    room_for_prompt = max(max_length - min(len(answer), max_length // 2), 1)
    prompt = prompt[-room_for_prompt:]
    answer = answer[: max_length - len(prompt)]
    if signal is not None:
        signal = signal.first(len(answer))
    return EncodedLm(prompt, answer, signal)


@dataclass
class LmBatch:
    """Shapes: input_ids, attention_mask, labels [B, L]; top_ids, top_logprobs [B, L, k]; tail, has_signal [B, L]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor
    tail: torch.Tensor
    has_signal: torch.Tensor

    def to(self, device: Any) -> LmBatch:
        return LmBatch(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))


def collate_lm(encoded: Sequence[EncodedLm], pad_id: int) -> LmBatch:
    """Right-padded tensors; teacher entries padded with −inf (ignored by the sparse loss)."""
    length = max(len(e.prompt) + len(e.answer) for e in encoded)
    k = max((len(top) for e in encoded if e.signal for top in e.signal.top_ids), default=1)
    batch = len(encoded)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, length), dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    top_ids = torch.zeros((batch, length, k), dtype=torch.long)
    top_logprobs = torch.full((batch, length, k), -math.inf)
    tail = torch.zeros((batch, length))
    has_signal = torch.zeros((batch, length), dtype=torch.bool)
    for row, e in enumerate(encoded):
        start, end = len(e.prompt), len(e.prompt) + len(e.answer)
        input_ids[row, :end] = torch.tensor(e.prompt + e.answer)
        attention[row, :end] = 1
        labels[row, start:end] = torch.tensor(e.answer)
        if e.signal is None:
            continue
        for offset, (ids, logprobs) in enumerate(zip(e.signal.top_ids, e.signal.top_logprobs, strict=True)):
            top_ids[row, start + offset, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            top_logprobs[row, start + offset, : len(ids)] = torch.tensor(logprobs)
        tail[row, start:end] = torch.tensor(e.signal.tail_mass)
        has_signal[row, start:end] = True
    return LmBatch(input_ids, attention, labels, top_ids, top_logprobs, tail, has_signal)


@dataclass
class ClassifyBatch:
    """input_ids, attention_mask [B, L]; labels [B] (the hard label's index); teacher_probs [B, C] or None."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    teacher_probs: torch.Tensor | None

    def to(self, device: Any) -> ClassifyBatch:
        probs = None if self.teacher_probs is None else self.teacher_probs.to(device)
        return ClassifyBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), probs)


def collate_classify(
    tokenizer: Any, examples: Sequence[DistillExample], label_ids: dict[str, int], *, max_length: int
) -> ClassifyBatch:
    """The hard label is the reference where there is one, else the teacher's label."""
    encoded = tokenizer(
        [e.prompt for e in examples], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    labels = torch.tensor([label_ids[e.reference or e.target] for e in examples])
    with_probs = [e.class_probs for e in examples]
    probs = torch.tensor(with_probs, dtype=torch.float32) if all(p is not None for p in with_probs) else None
    return ClassifyBatch(encoded["input_ids"], encoded["attention_mask"], labels, probs)
