"""Sequence classification for vLLM's classify API: each input's label probabilities."""

from __future__ import annotations

from typing import Any

from kascade.runtime.engines.transformers.requests import bad_request
from kascade.runtime.engines.vllm_layout import class_result


def encode_inputs(tokenizer: Any, texts: list[str], max_model_len: int) -> list[list[int]]:
    """Token ids of each input; an input longer than the context is the caller's error (400)."""
    encoded = [tokenizer(text)["input_ids"] for text in texts]
    for index, ids in enumerate(encoded):
        if len(ids) > max_model_len:
            raise bad_request(
                f"input[{index}] has {len(ids)} tokens; this model's maximum context length is "
                f"{max_model_len} tokens. Please reduce the length of the input.",
                "input",
            )
    return encoded


def label_names(config: Any, num_classes: int) -> list[str]:
    """The config's `id2label` (keys may be ints or strings after a JSON round trip), else `LABEL_i`."""
    id2label = getattr(config, "id2label", None) or {}
    return [id2label.get(i, id2label.get(str(i), f"LABEL_{i}")) for i in range(num_classes)]


def classify_encoded(model: Any, encoded: list[list[int]], device: Any) -> list[dict[str, Any]]:
    """One result per input, in vLLM's layout; the caller holds the model."""
    import torch

    results = []
    # One text at a time: no padding, so no pad-token subtleties between architectures.
    with torch.inference_mode():
        for index, ids in enumerate(encoded):
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
            probs = torch.softmax(logits, dim=-1).tolist()
            results.append(class_result(index, probs, label_names(model.config, len(probs))))
    return results
