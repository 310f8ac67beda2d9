"""Ask every tier of a cascade every example once; answers come from the cache when it has them.

A tier with engine `transformers` is loaded in this process and answers in
batches (`batch_generation`); engine `external` is asked over its
OpenAI-compatible API with logprobs. Engine `vllm` is served by vLLM on a GPU
machine: evaluate it as `external` at the server's URL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kascade.api.modelcascade import EngineKind, ModelCascade, Task, Tier
from kascade.evaluation.answer_cache import AnswerFile
from kascade.evaluation.records import Example, TierAnswer
from kascade.runtime.models.catalog import lookup


class EvaluationError(Exception):
    """The evaluation cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class GenerationSettings:
    """How every tier is asked: greedy, as serving would be with temperature 0."""

    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    top_logprobs: int = 5

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "top_logprobs": self.top_logprobs,
            "decoding": "greedy",
        }


def model_identity(tier: Tier, folder: Path | None) -> str:
    """What the cache keys a model by: its weights, not its tier's name.

    A packaged model is its catalog hash; a folder, the hash of its config and
    of its weight files' contents (a fine-tuned model has the same names and
    sizes as its base: only the contents tell a distilled student from the
    student it started from); an external API, its URL and name.
    """
    location = tier.model.location
    if location.pkg_name is not None:
        return f"pkg://{location.pkg_name}@sha256:{lookup(location.pkg_name).sha256}"
    if folder is None:
        return f"{tier.model.uri}#{tier.served_name}"
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name == "config.json":
            digest.update(path.read_bytes())
        elif path.suffix in {".safetensors", ".bin"}:
            with path.open("rb") as weights:
                digest.update(f"{path.name}:".encode() + hashlib.file_digest(weights, "sha256").digest())
    return f"folder@sha256:{digest.hexdigest()[:16]}"


Progress = Callable[[str, int, int], None]  # (tier name, answered so far, total)


def collect_answers(
    cascade: ModelCascade,
    examples: Sequence[Example],
    *,
    settings: GenerationSettings,
    answers_dir: Path,
    batch_size: int = 8,
    model_cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, list[TierAnswer]]:
    """Every tier's answer to every example, in example order (cached answers first, then the rest, in batches)."""
    results: dict[str, list[TierAnswer]] = {}
    for tier in cascade.spec.tiers:
        results[tier.name] = _collect_tier(
            cascade,
            tier,
            examples,
            settings=settings,
            answers_dir=answers_dir,
            batch_size=batch_size,
            model_cache_dir=model_cache_dir,
            progress=progress,
        )
    return results


def answered_by_every_tier(
    cascade: ModelCascade,
    examples: Sequence[Example],
    *,
    settings: GenerationSettings,
    answers_dir: Path,
    model_cache_dir: Path | None = None,
) -> list[Example]:
    """The examples every tier already has a cached answer to (nothing is generated): a run still going can be read."""
    kept = list(examples)
    for tier in cascade.spec.tiers:
        cache = _answer_file(cascade, tier, settings, answers_dir, _model_folder(tier, model_cache_dir))
        kept = [example for example in kept if cache.get(example) is not None]
    return kept


def _answer_file(
    cascade: ModelCascade, tier: Tier, settings: GenerationSettings, answers_dir: Path, folder: Path | None
) -> AnswerFile:
    task_settings = {"task": cascade.spec.task.value} | (
        {} if cascade.spec.task is Task.classify else settings.as_dict()
    )
    return AnswerFile(answers_dir, tier.served_name, model_identity(tier, folder), task_settings)


def _collect_tier(
    cascade: ModelCascade,
    tier: Tier,
    examples: Sequence[Example],
    *,
    settings: GenerationSettings,
    answers_dir: Path,
    batch_size: int,
    model_cache_dir: Path | None,
    progress: Progress | None,
) -> list[TierAnswer]:
    folder = _model_folder(tier, model_cache_dir)
    cache = _answer_file(cascade, tier, settings, answers_dir, folder)
    missing = [example for example in examples if cache.get(example) is None]
    done = len(examples) - len(missing)
    if progress is not None:
        progress(tier.name, done, len(examples))
    if missing:
        ask = _asker(cascade, tier, folder, settings)
        # Similar lengths batch together: less padding, less wasted compute.
        missing.sort(key=_request_length)
        for start in range(0, len(missing), batch_size):
            batch = missing[start : start + batch_size]
            cache.put_many(list(zip(batch, ask(batch), strict=True)))
            done += len(batch)
            if progress is not None:
                progress(tier.name, done, len(examples))
    answers = [cache.get(example) for example in examples]
    assert all(answer is not None for answer in answers)
    return answers  # type: ignore[return-value]


def _request_length(example: Example) -> int:
    if example.messages is not None:
        return sum(len(message.get("content", "")) for message in example.messages)
    return len(example.prompt or example.input or "")


def _model_folder(tier: Tier, model_cache_dir: Path | None) -> Path | None:
    if tier.engine is EngineKind.external:
        return None
    if tier.engine is EngineKind.vllm:
        raise EvaluationError(
            f"tier {tier.name}: engine vllm is evaluated through its server: start `vllm serve` on a GPU "
            "machine and give the tier engine: external with model.uri set to the server's /v1 URL"
        )
    from kascade.runtime.models.files import resolve_model_uri

    return resolve_model_uri(tier.model.uri, cache_dir=model_cache_dir)


def _asker(cascade: ModelCascade, tier: Tier, folder: Path | None, settings: GenerationSettings):
    """A function from a batch of examples to their answers, for this tier."""
    classify = cascade.spec.task is Task.classify
    if folder is None:
        from kascade.evaluation.http_answers import ask_over_http

        return lambda batch: ask_over_http(tier, batch, settings=settings, classify=classify)
    from kascade.evaluation.batch_generation import classify_batch, generate_answers
    from kascade.runtime.engines.transformers.loading import load_model, without_progress_bars
    from kascade.runtime.engines.transformers.prompts import encode_prompt

    with without_progress_bars():
        loaded = load_model(folder, task="classify" if classify else "generate", device="auto")
    if classify:
        return lambda batch: classify_batch(loaded, [example.input or "" for example in batch])

    def generate(batch: Sequence[Example]) -> list[TierAnswer]:
        prompts = [
            encode_prompt(loaded.tokenizer, list(e.messages) if e.messages is not None else e.prompt or "")
            for e in batch
        ]
        return generate_answers(
            loaded, prompts, max_tokens=settings.max_tokens, stop=settings.stop, top_logprobs=settings.top_logprobs
        )

    return generate
