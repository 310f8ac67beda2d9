"""Data the distillation tests share: the prompts of the tiny cascade's log, and a dataset file answering them.

- `prompts`: 36 short questions (local mode escalates each of them once in `test_distill`);
- `answers_file(count)`: a dataset .jsonl of the first `count` prompts, each answered "Paris.".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

PROMPTS = [
    f"{subject} {verb} {thing}?"
    for subject in ("What", "Why", "How", "Who")
    for verb in ("is", "are", "was")
    for thing in ("the cat", "a model", "Paris")
]


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    return list(PROMPTS)


@pytest.fixture
def answers_file(tmp_path: Path) -> Callable[[int], Path]:
    def write(count: int) -> Path:
        data = tmp_path / "answers.jsonl"
        data.write_text(
            "".join(
                json.dumps({"messages": [{"role": "user", "content": p}], "answer": "Paris."}) + "\n"
                for p in PROMPTS[:count]
            )
        )
        return data

    return write
