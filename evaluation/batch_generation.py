"""Greedy generation for many prompts at once, with the token evidence a tier's engine would report.

An evaluation asks every tier every example; one prompt at a time would
waste this machine's two cores, so prompts go through `model.generate` in
batches (left-padded). Each answer carries what the serving engine reports
for the same request: the generated tokens' own texts, the chosen token's raw
logprob and the top-k raw logprobs at every position (before any sampling
transform, as vLLM reports them), the stop token included, and the text cut
before the first stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kascade.evaluation.records import TierAnswer
from kascade.runtime.engines.transformers.loading import LoadedModel


class _RecordTopLogprobs:
    """A logits processor that keeps the top-k raw logprobs of every row at every step and changes nothing."""

    def __init__(self, top_k: int) -> None:
        self.top_k = top_k
        self.steps: list[tuple[Any, Any]] = []  # per step: (values [B, k], ids [B, k])

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        logprobs = torch.log_softmax(scores.float(), dim=-1)
        values, ids = torch.topk(logprobs, self.top_k, dim=-1)
        self.steps.append((values.cpu(), ids.cpu()))
        return scores


def _answer_length(
    ids: Sequence[int], stop_ids: frozenset[int], decode: Callable[[list[int]], str], stop: Sequence[str]
) -> tuple[int, str]:
    """How many generated tokens belong to the answer, and why it ended ("stop" or "length").

    It ends at the first stop token (included, as engines report it) or at
    the token that completes a stop string, whichever comes first.
    """
    for index, token_id in enumerate(ids):
        if token_id in stop_ids:
            return index + 1, "stop"
        if stop and any(s in decode(list(ids[: index + 1])) for s in stop):
            return index + 1, "stop"
    return len(ids), "length"


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cuts = [text.find(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


def generate_answers(
    loaded: LoadedModel,
    prompts: Sequence[list[int]],
    *,
    max_tokens: int,
    stop: Sequence[str] = (),
    top_logprobs: int = 5,
) -> list[TierAnswer]:
    """Greedy answers to `prompts` (token ids), in one batch; see the module docstring for what each holds."""
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(loaded.stop_token_ids)
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=loaded.device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=loaded.device)
    recorder = _RecordTopLogprobs(max(top_logprobs, 1))
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            logits_processor=[recorder],
            pad_token_id=pad_id,
            eos_token_id=sorted(loaded.stop_token_ids),
            stop_strings=list(stop) or None,
            tokenizer=tokenizer if stop else None,
        )
    generated = output[:, width:].tolist()

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    answers = []
    for row, (prompt, ids) in enumerate(zip(prompts, generated, strict=True)):
        length, finish = _answer_length(ids, loaded.stop_token_ids, decode, stop)
        kept = ids[:length]
        logprobs, tops = [], []
        for step, token_id in enumerate(kept):
            values, top_ids = recorder.steps[step]
            row_values, row_ids = values[row].tolist(), top_ids[row].tolist()
            # Greedy: the chosen token is the most likely one, so it is in the top list.
            logprobs.append(row_values[row_ids.index(token_id)] if token_id in row_ids else row_values[0])
            tops.append(tuple(row_values[:top_logprobs]))
        answers.append(
            TierAnswer(
                text=_cut_at_stop(decode(kept), stop),
                tokens=tuple(tokenizer.decode([t], skip_special_tokens=False) for t in kept),
                logprobs=tuple(logprobs),
                top_logprobs=tuple(tops),
                prompt_tokens=len(prompt),
                completion_tokens=len(kept),
                finish_reason=finish,
            )
        )
    return answers


def classify_batch(loaded: LoadedModel, texts: Sequence[str]) -> list[TierAnswer]:
    """Label probabilities for `texts` in one batch, with the label names of the model's config.

    Inputs longer than the model's context are cut to it (the model server would refuse them).
    """
    import torch

    max_length = loaded.max_model_len
    # A model that cannot find its padding (no pad_token_id) reads one text at a time, as the server does.
    step = len(texts) if getattr(loaded.model.config, "pad_token_id", None) is not None else 1
    probs = []
    with torch.inference_mode():
        for start in range(0, len(texts), step):
            encoded = loaded.tokenizer(
                list(texts[start : start + step]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            encoded = {key: value.to(loaded.device) for key, value in encoded.items()}
            probs += torch.softmax(loaded.model(**encoded).logits.float(), dim=-1).cpu().tolist()
    id2label = loaded.model.config.id2label
    answers = []
    for row, text in zip(probs, texts, strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        label = str(id2label[best])
        answers.append(
            TierAnswer(
                text=label,
                label=label,
                probs=tuple(row),
                prompt_tokens=len(loaded.tokenizer(text, truncation=True, max_length=max_length)["input_ids"]),
                completion_tokens=0,
            )
        )
    return answers
