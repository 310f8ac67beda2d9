"""Every tier's answers on disk, so sweeps, new methods and re-runs cost nothing and an interrupted run resumes.

One JSON-lines file per (model identity, generation settings); one line per
answered request, keyed by a hash of the request. Lines are appended batch by
batch, so a run stopped half-way keeps what it finished. A file may also be
gzip-compressed (`.jsonl.gz`): results kept in a repository are read from
there, and new answers go to the plain file beside them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kascade.evaluation.records import Example, TierAnswer


def request_key(example: Example) -> str:
    """A stable hash of what the model is asked (not the example's id or reference)."""
    request = {"messages": example.messages, "prompt": example.prompt, "input": example.input}
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:24]


def settings_key(model_identity: str, settings: Mapping[str, Any]) -> str:
    blob = json.dumps({"model": model_identity, "settings": dict(settings)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class AnswerFile:
    """The cached answers of one model under one set of generation settings."""

    def __init__(self, folder: Path, served_name: str, model_identity: str, settings: Mapping[str, Any]) -> None:
        slug = re.sub(r"[^A-Za-z0-9.-]+", "-", served_name).strip("-") or "model"
        stem = f"{slug}-{settings_key(model_identity, settings)}"
        self.path = folder / f"{stem}.jsonl"
        self.compressed = folder / f"{stem}.jsonl.gz"
        self.header = {"model": model_identity, "settings": dict(settings)}
        self._answers: dict[str, TierAnswer] = {}
        for path, opener in ((self.compressed, gzip.open), (self.path, open)):
            if path.is_file():
                with opener(path, "rt", encoding="utf-8") as handle:
                    self._read(handle)

    def _read(self, handle: Any) -> None:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run: that answer is asked again
            if "key" in record:
                self._answers[record["key"]] = TierAnswer.model_validate(record["answer"])

    def get(self, example: Example) -> TierAnswer | None:
        return self._answers.get(request_key(example))

    def put_many(self, answers: Sequence[tuple[Example, TierAnswer]]) -> None:
        """Append answers (one flush per batch); the header line goes first in a new file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists()
        with self.path.open("a", encoding="utf-8") as handle:
            if new_file:
                handle.write(json.dumps({"header": self.header}) + "\n")
            for example, answer in answers:
                key = request_key(example)
                self._answers[key] = answer
                handle.write(
                    json.dumps({"key": key, "id": example.id, "answer": answer.model_dump(mode="json")}) + "\n"
                )
