"""One step's loss: the student's forward pass and the losses of `losses.py`, for each kind of batch.

- LM, off-policy: hard cross-entropy on every answer token, plus (alpha, T²)
  the sparse divergence from the teacher's top-k + tail where the example has
  a token-level signal;
- LM, on-policy: the student samples answers to the batch's prompts; the
  in-process teacher scores them; the divergence over the full vocabulary on
  the sampled tokens (no hard term: there is no label to imitate);
- classifier: hard cross-entropy on the labels, plus the divergence from the
  teacher's class probabilities.
"""

from __future__ import annotations

from typing import Any

import torch

from kascade.api.loop import Training
from kascade.distillation.batches import ClassifyBatch, EncodedLm, LmBatch
from kascade.distillation.losses import (
    IGNORE_INDEX,
    dense_divergence,
    distillation_loss,
    hard_label_loss,
    sparse_divergence,
)


def lm_loss(student: Any, batch: LmBatch, training: Training) -> torch.Tensor:
    logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    labels = batch.labels[:, 1:]
    hard = hard_label_loss(logits, labels)
    soft_labels = labels.masked_fill(~batch.has_signal[:, 1:], IGNORE_INDEX)
    if not bool((soft_labels != IGNORE_INDEX).any()):
        return hard
    soft = sparse_divergence(
        logits,
        batch.top_ids[:, 1:],
        batch.top_logprobs[:, 1:],
        batch.tail[:, 1:],
        soft_labels,
        divergence=training.loss,
        beta=training.beta,
        temperature=training.temperature,
    )
    return distillation_loss(soft, hard, alpha=training.alpha, temperature=training.temperature)


def classify_loss(student: Any, batch: ClassifyBatch, training: Training) -> torch.Tensor:
    logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    hard = hard_label_loss(logits, batch.labels)
    if batch.teacher_probs is None:
        return hard
    teacher_logits = batch.teacher_probs.clamp_min(1e-12).log()
    soft = dense_divergence(
        logits, teacher_logits, divergence=training.loss, beta=training.beta, temperature=training.temperature
    )
    return distillation_loss(soft, hard, alpha=training.alpha, temperature=training.temperature)


def sample_answers(
    student: Any, tokenizer: Any, prompts: list[list[int]], *, max_new_tokens: int, seed: int
) -> list[EncodedLm]:
    """The student's own answers (sampled at T = 1) to left-padded prompts, without teacher signal."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(seed)
    with torch.no_grad():
        was_training = student.training
        student.eval()
        out = student.generate(
            input_ids=input_ids.to(student.device),
            attention_mask=attention.to(student.device),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
        )
        student.train(was_training)
    encoded = []
    for row, prompt in enumerate(prompts):
        answer = out[row, width:].tolist()
        if tokenizer.eos_token_id in answer:
            answer = answer[: answer.index(tokenizer.eos_token_id) + 1]
        encoded.append(EncodedLm(prompt, [t for t in answer if t != pad] or [pad], None))
    return encoded


def on_policy_loss(student: Any, teacher: Any, batch: LmBatch, training: Training) -> torch.Tensor:
    """The divergence between student and teacher on the student's own sampled tokens (full vocabulary)."""
    logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    vocabulary = min(logits.shape[-1], teacher_logits.shape[-1])  # padded embedding rows differ between sizes
    soft = dense_divergence(
        logits[..., :vocabulary],
        teacher_logits[..., :vocabulary],
        batch.labels[:, 1:],
        divergence=training.loss,
        beta=training.beta,
        temperature=training.temperature,
    )
    return distillation_loss(soft, None, alpha=training.alpha, temperature=training.temperature)


def scored_sample_loss(student: Any, batch: LmBatch, training: Training) -> torch.Tensor:
    """On-policy through a teacher server: the sparse divergence to its top-k + tail on the sampled tokens only."""
    logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    soft = sparse_divergence(
        logits,
        batch.top_ids[:, 1:],
        batch.top_logprobs[:, 1:],
        batch.tail[:, 1:],
        batch.labels[:, 1:],
        divergence=training.loss,
        beta=training.beta,
        temperature=training.temperature,
    )
    return distillation_loss(soft, None, alpha=training.alpha, temperature=training.temperature)
