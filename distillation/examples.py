"""Distillation data: examples from an escalation log or a dataset file, split by a stable hash. Pure, no torch.

From a log, each record gives the prompt (chat messages, a completion prompt or
a classify input), the teacher's answer, and, where the log kept them, the
teacher's token ids with top-k logprobs and tail (token-level signal) or its
class probabilities. From a JSONL dataset (the evaluation format: `messages`
or `prompt` with an `answer`; `input` with a `label`), the reference is the
target, and a teacher in process supplies the soft signal.

The held-out split hashes each example's id, so reruns, resumes and a later
promotion gate agree on which examples were never trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kascade.api.escalation_record import EscalationRecord, RecordKind, TeacherTokens
from kascade.evaluation.datasets import DatasetError, jsonl_objects, seeded_sample, stable_fraction

Kind = Literal["chat", "completion", "classify"]


class DistillDataError(ValueError):
    """The data cannot be trained on; the message says why and where."""


@dataclass(frozen=True)
class DistillExample:
    id: str
    kind: Kind
    prompt: Any  # chat: a list of messages; completion and classify: a string
    target: str  # the teacher's answer (classify: its label)
    signal: TeacherTokens | None = None  # token-level teacher signal, where known
    class_probs: tuple[float, ...] | None = None  # classify: the teacher's probabilities
    reference: str | None = None  # a dataset's reference answer or label (accuracy), where known


HELD_OUT_SALT = "kascade-distill-held-out:"


def is_held_out(example_id: str, share: float) -> bool:
    """Stable across runs and machines: the salted id's `stable_fraction` below `share`.

    Salted, so that it does not follow another split made by hashing the same ids (a dataset's own
    train/test split by the stable fraction of the id would otherwise put a whole test part on one side).
    """
    return stable_fraction(HELD_OUT_SALT + example_id) < share


def split(examples: Sequence[DistillExample], share: float) -> tuple[list[DistillExample], list[DistillExample]]:
    """(train, held out)."""
    train = [e for e in examples if not is_held_out(e.id, share)]
    held = [e for e in examples if is_held_out(e.id, share)]
    return train, held


def sample(examples: Sequence[DistillExample], limit: int | None, seed: int) -> list[DistillExample]:
    """A fixed seeded sample of `limit` examples (`seeded_sample`), ordered by id; all of them, in order, when None."""
    if limit is None or limit >= len(examples):
        return list(examples)
    return sorted(seeded_sample(examples, limit, seed), key=lambda e: e.id)


def example_of_record(record: EscalationRecord) -> DistillExample:
    request = json.loads(record.request)
    if record.endpoint == "chat":
        kind: Kind = "chat"
        prompt: Any = request.get("messages")
    elif record.endpoint == "completion":
        kind, prompt = "completion", request.get("prompt")
    else:
        kind, prompt = "classify", request.get("input")
        prompt = prompt[0] if isinstance(prompt, list) and prompt else prompt
    probs = tuple(record.class_probs) if record.class_probs is not None else None
    return DistillExample(
        id=record.id, kind=kind, prompt=prompt, target=record.answer, signal=record.tokens, class_probs=probs
    )


def examples_of_log(records: Iterable[EscalationRecord]) -> list[DistillExample]:
    """One example per record: the last tier's answer to a real request is a teacher answer, whatever the kind.

    Shadow samples and probes are included with escalations: a probe holds the
    last tier's answer to a request the student's tier was routed past, the
    requests its pre-route score finds hardest, which no escalation record
    holds once pre-routing is on. A probe whose request and answer an
    escalation (or shadow) record of the log holds already (in a cascade of
    three or more tiers, a request routed past the first tier that a middle
    tier declined is both) is left out: one request, one example, on one side
    of the held-out split.
    """
    kept = list(records)
    others = {(record.request, record.answer) for record in kept if record.kind is not RecordKind.probe}
    return [
        example_of_record(record)
        for record in kept
        if record.kind is not RecordKind.probe or (record.request, record.answer) not in others
    ]


def _example_of_line(line: dict[str, Any], number: int, where: str) -> DistillExample:
    if "input" in line:
        label = line.get("label")
        if not isinstance(line["input"], str) or not isinstance(label, str):
            raise DistillDataError(f"{where}:{number}: a classify line needs a string `input` and a string `label`")
        return DistillExample(id=_line_id(line), kind="classify", prompt=line["input"], target=label, reference=label)
    answer = line.get("answer")
    if not isinstance(answer, str):
        raise DistillDataError(
            f"{where}:{number}: a line needs an `answer` (the target) with its `messages` or `prompt`"
        )
    if isinstance(line.get("messages"), list):
        return DistillExample(id=_line_id(line), kind="chat", prompt=line["messages"], target=answer, reference=answer)
    if isinstance(line.get("prompt"), str):
        return DistillExample(
            id=_line_id(line), kind="completion", prompt=line["prompt"], target=answer, reference=answer
        )
    raise DistillDataError(f"{where}:{number}: a line needs `messages` (a list) or `prompt` (a string)")


def _line_id(line: dict[str, Any]) -> str:
    if isinstance(line.get("id"), str | int):
        return str(line["id"])
    return hashlib.sha256(json.dumps(line, sort_keys=True).encode()).hexdigest()[:24]


def examples_of_jsonl(path: Path) -> list[DistillExample]:
    try:
        return [_example_of_line(line, number, str(path)) for number, line in jsonl_objects(path)]
    except DatasetError as error:
        raise DistillDataError(str(error)) from None


def load_examples(data: str) -> tuple[list[DistillExample], str]:
    """Examples from a dataset file (`.jsonl`) or an escalation log (anything else); and a description of the source."""
    if data.endswith(".jsonl") and Path(data).is_file():
        return examples_of_jsonl(Path(data)), f"dataset {data}"
    from kascade.runtime.escalation.segments import SegmentStore

    store = SegmentStore(data)
    segments = store.segments()
    if not segments:
        raise DistillDataError(f"{data}: neither a .jsonl dataset nor an escalation log with segments")
    return examples_of_log(store.records()), f"escalation log {data} ({len(segments)} segments)"
