"""Running model-written code against a problem's tests: in a separate process, never in this one.

Each program runs with `python -I` (isolated: no user site, no environment
paths) in a throw-away working directory, with a wall-clock limit, a CPU-time
limit, an address-space limit and no core files. The program is HumanEval's:
the problem's prompt with a `pass` body (so helper functions the prompt
defines exist), then the answer's code, then the tests and `check(entry_point)`.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from kascade.evaluation.records import Example

TIME_LIMIT_SECONDS = 10
MEMORY_LIMIT_BYTES = 2 * 1024**3


def _limit_resources() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_CPU, (TIME_LIMIT_SECONDS, TIME_LIMIT_SECONDS))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.setsid()  # its own process group: a timeout kills whatever it started


def test_program(example: Example, code: str) -> str:
    assert example.tests is not None
    tests = example.tests
    return f"{tests.prompt}    pass\n\n{code}\n\n{tests.test}\n\ncheck({tests.entry_point})\n"


def passes(example: Example, code: str) -> bool:
    """Whether `code` passes the example's tests within the limits."""
    with tempfile.TemporaryDirectory(prefix="kascade-code-") as workdir:
        path = os.path.join(workdir, "program.py")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(test_program(example, code))
        child = subprocess.Popen(
            [sys.executable, "-I", path],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_limit_resources,
            env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
        )
        try:
            return child.wait(timeout=TIME_LIMIT_SECONDS) == 0
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # the whole group: whatever the program started too
            child.wait()
            return False


def run_tests(examples: Sequence[Example], programs: Sequence[str], *, workers: int = 2) -> list[bool | None]:
    """Each program against its example's tests (None where an example has no tests), `workers` at a time."""

    def one(pair: tuple[Example, str]) -> bool | None:
        example, code = pair
        return None if example.tests is None else passes(example, code)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, zip(examples, programs, strict=True)))
