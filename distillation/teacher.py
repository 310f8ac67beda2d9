"""An in-process teacher: its top-k + tail on the targets, computed once and cached; its class probabilities.

The cache (`teacher-signal.jsonl` in the output folder) is keyed by example id
and the teacher's top-k, so a resumed or repeated run does not run the teacher
again; it is appended batch by batch, so an interrupted scoring pass resumes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kascade.api.escalation_record import TeacherTokens
from kascade.distillation.batches import EncodedLm, collate_lm
from kascade.distillation.examples import DistillExample


def _signals_of(teacher: Any, encoded: Sequence[EncodedLm], pad_id: int, top_k: int) -> list[TeacherTokens]:
    batch = collate_lm(encoded, pad_id)
    with torch.no_grad():
        logits = teacher(
            input_ids=batch.input_ids.to(teacher.device), attention_mask=batch.attention_mask.to(teacher.device)
        ).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    values, ids = logprobs.topk(top_k, dim=-1)
    tails = (1 - values.exp().sum(-1)).clamp_min(0)
    signals = []
    for row, e in enumerate(encoded):
        # The token at position t is predicted by the logits at t - 1.
        positions = range(len(e.prompt) - 1, len(e.prompt) + len(e.answer) - 1)
        signals.append(
            TeacherTokens(
                token_ids=list(e.answer),
                top_ids=[ids[row, p].tolist() for p in positions],
                top_logprobs=[values[row, p].tolist() for p in positions],
                tail_mass=[tails[row, p].item() for p in positions],
            )
        )
    return signals


def score_targets(
    teacher: Any,
    examples: Sequence[DistillExample],
    encoded: Sequence[EncodedLm],
    *,
    pad_id: int,
    top_k: int,
    cache: Path,
    batch_size: int,
) -> dict[str, TeacherTokens]:
    """The teacher's signal on each example's target tokens (teacher forcing), from the cache or computed."""
    known = read_signal_cache(cache, top_k)
    # A cached signal counts only for the same answer tokens (another --max-length cuts them elsewhere).
    missing = [
        (x, e) for x, e in zip(examples, encoded, strict=True) if x.id not in known or known[x.id].token_ids != e.answer
    ]
    cache.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(missing), batch_size):
        chunk = missing[start : start + batch_size]
        signals = _signals_of(teacher, [e for _, e in chunk], pad_id, top_k)
        with cache.open("a", encoding="utf-8") as file:
            for (example, _), signal in zip(chunk, signals, strict=True):
                known[example.id] = signal
                file.write(json.dumps({"id": example.id, "top_k": top_k, **signal.model_dump()}) + "\n")
    return known


def read_signal_cache(cache: Path, top_k: int) -> dict[str, TeacherTokens]:
    known: dict[str, TeacherTokens] = {}
    if not cache.exists():
        return known
    for text in cache.read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption: scored again
        if line.pop("top_k", None) == top_k:
            known[line.pop("id")] = TeacherTokens.model_validate(line)
    return known


def class_probabilities(
    teacher: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int, batch_size: int
) -> list[tuple[float, ...]]:
    """The teacher classifier's probabilities for each text."""
    results: list[tuple[float, ...]] = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            list(texts[start : start + batch_size]),
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        ).to(teacher.device)
        with torch.no_grad():
            probs = torch.softmax(teacher(**encoded).logits.float(), dim=-1)
        results.extend(tuple(row.tolist()) for row in probs)
    return results
