"""`kascade eval` and `kascade calibrate`: the shell around the pure parts (load, ask, judge, analyse, write)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from kascade.api.agreement import SEMANTIC_CUTOFF, AnswerMatcher
from kascade.api.modelcascade import ModelCascade, ScoredSpan, Task
from kascade.evaluation.collect import GenerationSettings, answered_by_every_tier, collect_answers
from kascade.evaluation.datasets import Dataset, DatasetError, load_dataset, subset
from kascade.evaluation.judging import JudgedPair, check_two_tiers, judge_pair
from kascade.evaluation.matchers import Matcher
from kascade.runtime.local.manifest import load_manifest


@dataclass(frozen=True)
class EvalInputs:
    """What both commands share: the manifest, the data, and where answers are cached."""

    manifest: Path | None
    data: str
    limit: int | None = None
    seed: int = 0
    match: str | None = None
    max_tokens: int | None = None
    batch_size: int = 8
    answers_dir: Path | None = None
    cache_dir: Path | None = None
    cached_only: bool = False  # only the examples every tier has answered already; nothing is generated
    judge_url: str | None = None  # matcher judge: an OpenAI-compatible endpoint instead of calibration.judge/last tier
    judge_model: str | None = None


@contextlib.contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        yield progress


def prepare(inputs: EvalInputs, console: Console) -> tuple[ModelCascade, Dataset, JudgedPair]:
    """Load the manifest and data, have both tiers answer every example (cached), judge the answers."""
    cascade = load_manifest(inputs.manifest)
    check_two_tiers(cascade)
    kind = AnswerMatcher(inputs.match) if inputs.match else None
    dataset = subset(load_dataset(inputs.data, cache_dir=inputs.cache_dir, kind=kind), inputs.limit, inputs.seed)
    if kind is not None:
        dataset = Dataset(dataset.name, dataset.examples, kind, dataset.max_tokens, dataset.stop)
    _check_task(cascade, dataset)
    settings = GenerationSettings(max_tokens=inputs.max_tokens or dataset.max_tokens, stop=dataset.stop)
    answers_dir = inputs.answers_dir or Path("kascade-eval") / "answers"
    if inputs.cached_only:
        answered = answered_by_every_tier(
            cascade, dataset.examples, settings=settings, answers_dir=answers_dir, model_cache_dir=inputs.cache_dir
        )
        if not answered:
            raise DatasetError(
                f"--cached-only: no example of {dataset.name} has answers from every tier in {answers_dir}"
            )
        console.print(f"--cached-only: {len(answered)} of {len(dataset.examples)} examples have every tier's answer")
        dataset = Dataset(dataset.name, answered, dataset.kind, dataset.max_tokens, dataset.stop)
    tasks: dict[str, TaskID] = {}
    with _progress(console) as progress:

        def report(tier: str, done: int, total: int) -> None:
            if tier not in tasks:
                tasks[tier] = progress.add_task(f"tier {tier}: answers", total=total)
            progress.update(tasks[tier], completed=done)

        answers = collect_answers(
            cascade,
            dataset.examples,
            settings=settings,
            answers_dir=answers_dir,
            batch_size=inputs.batch_size,
            model_cache_dir=inputs.cache_dir,
            progress=report,
        )
    judge = None
    if dataset.kind is AnswerMatcher.judge:
        from kascade.evaluation.judge_answers import judge_for

        judge = judge_for(
            cascade,
            url=inputs.judge_url,
            model=inputs.judge_model,
            verdicts_dir=answers_dir,  # verdicts are cached beside the answers
            cache_dir=inputs.cache_dir,
            batch_size=inputs.batch_size,
        )
    with console.status("judging the answers"):
        cutoff = cascade.spec.calibration.semantic_cutoff if cascade.spec.calibration else SEMANTIC_CUTOFF
        matcher = Matcher(dataset.kind, cache_dir=inputs.cache_dir, judge=judge, semantic_cutoff=cutoff)
        pair = judge_pair(cascade, dataset.examples, answers, matcher)
    if judge is not None and judge.unjudged:
        console.print(
            f"[yellow]the judge gave no verdict on {judge.unjudged} of {judge.asked} questions: "
            "counted as disagreement (and as wrong against a reference)[/yellow]"
        )
    return cascade, dataset, pair


def _check_task(cascade: ModelCascade, dataset: Dataset) -> None:
    first = dataset.examples[0]
    classify = cascade.spec.task is Task.classify
    if classify and first.input is None:
        raise DatasetError(f"{dataset.name} holds chat or completion requests; this cascade's task is classify")
    if not classify and first.input is not None:
        raise DatasetError(f"{dataset.name} holds classify inputs; this cascade's task is {cascade.spec.task.value}")
    if cascade.spec.task is Task.chat and first.messages is None:
        raise DatasetError(f"{dataset.name} holds completion prompts; this cascade's task is chat (give messages)")


def spans_for(cascade: ModelCascade, chosen: Sequence[str] | None) -> list[ScoredSpan]:
    if cascade.spec.task is Task.classify:
        return [ScoredSpan.all]
    return [ScoredSpan(s) for s in chosen] if chosen else list(ScoredSpan)
