"""School-mathematics questions with exact answers, from DeepMind's `mathematics-dataset` generator.

The generator imports only beside sympy 1.5.1, and torch needs a newer
sympy, so it runs in a virtual environment of its own, made once under
<cache>/mathematics-venv; this process only reads what it prints (JSON
lines). Generation is seeded per module, with PYTHONHASHSEED=0 (its variable
letters otherwise change between runs), so the same seed gives the same
questions on every machine. The result is cached as a JSONL file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

from kascade.api.agreement import AnswerMatcher
from kascade.evaluation.datasets import Dataset, DatasetError
from kascade.evaluation.records import Example
from kascade.runtime.models.catalog import default_cache_dir

MODULES = ("arithmetic__add_or_sub", "numbers__gcd", "algebra__linear_1d", "numbers__place_value")
PER_MODULE = 125  # 500 questions in all
REQUIREMENTS = ("mathematics-dataset==1.0.1", "sympy==1.5.1")
INSTRUCTIONS = {
    "final": "Answer with the final number only.",
    "work": "Work it out step by step, briefly, then give the final line as 'Answer: <number>'.",
}

_GENERATOR = r"""
import json, random, sys
import numpy as np
from mathematics_dataset.modules import modules
per_module, seed = int(sys.argv[1]), int(sys.argv[2])
chosen = sys.argv[3:]
for offset, name in enumerate(chosen):
    random.seed(seed + offset); np.random.seed(seed + offset)
    group, _, module_name = name.partition("__")
    module = modules.train(lambda x: x)[group][module_name]  # the easiest training difficulty
    for index in range(per_module):
        problem = module()
        print(json.dumps({"id": f"{name}/{index}", "question": str(problem.question), "answer": str(problem.answer),
                          "slice": name}))
"""


def _environment(cache: Path) -> Path:
    folder = cache / "mathematics-venv"
    python, ready = folder / "bin" / "python", folder / "kascade-ready"
    if ready.exists():
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    # cwd: the environment itself, so that no folder of the caller's shadows a standard module.
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS],
        capture_output=True,
        text=True,
        check=False,
        cwd=folder,
    )
    if done.returncode != 0:
        raise DatasetError(f"could not install {' '.join(REQUIREMENTS)} into {folder}: {done.stderr.strip()[-300:]}")
    ready.write_text(" ".join(REQUIREMENTS) + "\n")
    return python


def mathematics(cache_dir: Path | None = None, *, seed: int = 0, instruction: str = "final") -> Dataset:
    """500 seeded questions (125 from each module), asked as chat with `instruction` (final or work)."""
    cache = cache_dir or default_cache_dir()
    path = cache / "datasets" / f"mathematics-{seed}-{PER_MODULE}.jsonl"
    if not path.is_file():
        python = _environment(cache)
        done = subprocess.run(
            [str(python), "-c", _GENERATOR, str(PER_MODULE), str(seed), *MODULES],
            capture_output=True,
            text=True,
            check=False,
            cwd=python.parent.parent,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        if done.returncode != 0:
            raise DatasetError(f"mathematics-dataset failed: {done.stderr.strip()[-400:]}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(done.stdout)
    suffix = INSTRUCTIONS[instruction]
    examples = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        examples.append(
            Example(
                id=record["id"],
                messages=({"role": "user", "content": f"{record['question']} {suffix}"},),
                answer=record["answer"],
                slice=record["slice"],
            )
        )
    max_tokens = 24 if instruction == "final" else 192
    return Dataset(f"math-{instruction}", examples, AnswerMatcher.number, max_tokens=max_tokens)


if __name__ == "__main__":  # python -m kascade.evaluation.math_questions: generate and print the count
    print(len(mathematics().examples), file=sys.stderr)
