"""Shared fixtures: tiny random models on disk, and real `kascade serve` processes.

- `tiny_small_lm_dir`, `tiny_large_lm_dir`: causal LMs (seeds 1 and 2) that
  share one tokenizer, as a small and a large tier would.
- `tiny_classifier_dir`: a two-label sequence classifier (negative, positive).
- `tiny_encoder_onnx_dir`: a tiny BERT encoder exported to ONNX, as the packaged MiniLM is
  (`kascade.runtime.models.encoder`), with its transformers folder beside it (`.parent / "source"`).
- `start_model_server(model_dir, name=..., task=...)`: starts a real
  `kascade serve` subprocess, waits for /health and returns a `ModelServer`
  (`.url` is the OpenAI base URL `http://127.0.0.1:N/v1`, `.process`,
  `.kill()`, `.stop()`); everything it started is stopped after the test.
- `start_shared_model_server(...)`: the same, but one process per
  (folder, name, task) for the whole session; never kill those.

The `slow` mark (its rule is in pyproject's marker list) is kept honest here,
so it stays right as tests are added: a test that uses a fixture of
`SLOW_FIXTURES` is marked at collection, and a test left unmarked that starts a
process or binds a socket fails and says which mark it needs.
"""

from __future__ import annotations

import _posixsubprocess
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from kascade.runtime.serving import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT_S = 90.0

# Fixtures whose users are slow by the marker's rule, wherever the test lives.
SLOW_FIXTURES = {
    "_tiny_torch": "loads a tiny model (every tiny_*_dir fixture depends on it)",
    "start_model_server": "starts `kascade serve` processes",
    "start_shared_model_server": "starts `kascade serve` processes",
    "start_upstream": "serves fixed-answer tiers on loopback (tests/runtime/conftest.py)",
    "start_router": "serves a router on loopback (tests/runtime/conftest.py)",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


class SlowWorkWithoutTheMark(Exception):
    """A test outside the `slow` mark did what the mark's rule reserves for slow tests."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Refuse processes and sockets in a test without the `slow` mark, so `-m "not slow"` stays fast.

    The refusal spans the test's whole setup, call and teardown, so the module- and session-scoped
    fixtures it sets up are held to the rule too. Every process start goes through
    `subprocess.Popen._execute_child` (asyncio's subprocesses included), `_posixsubprocess.fork_exec`
    (multiprocessing's spawn and forkserver), `os.fork` (multiprocessing's fork) or `os.posix_spawn[p]`;
    every server, stand-in or `free_port` binds a socket.
    """
    if item.get_closest_marker("slow") is not None:
        yield
        return

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*_: object, **__: object) -> Any:
            raise SlowWorkWithoutTheMark(
                f"{item.nodeid} {what} but is not marked slow: add `@pytest.mark.slow` to it "
                "(or `pytestmark = pytest.mark.slow` to its module); the rule is in pyproject.toml's markers"
            )

        return refused

    with pytest.MonkeyPatch.context() as patch:
        process_starts = [
            (subprocess.Popen, "_execute_child"),
            (_posixsubprocess, "fork_exec"),
            (os, "fork"),
            (os, "posix_spawn"),
            (os, "posix_spawnp"),
        ]
        for owner, name in process_starts:
            patch.setattr(owner, name, refuse("starts a process"))
        patch.setattr(socket.socket, "bind", refuse("binds a socket (a server on loopback)"))
        yield


@pytest.fixture(scope="session")
def _tiny_torch() -> None:
    import torch

    # With models this small, the intra-op thread pool costs more than it saves
    # (10x slower per token on a 2-core machine).
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_small_lm_dir(tmp_path_factory: pytest.TempPathFactory, _tiny_torch: None) -> Path:
    from kascade.testing.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-small-lm"), seed=1)


@pytest.fixture(scope="session")
def tiny_large_lm_dir(tmp_path_factory: pytest.TempPathFactory, _tiny_torch: None) -> Path:
    from kascade.testing.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-large-lm"), seed=2)


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory, _tiny_torch: None) -> Path:
    from kascade.testing.tiny_models import build_tiny_classifier

    return build_tiny_classifier(tmp_path_factory.mktemp("tiny-classifier"), seed=3)


@pytest.fixture(scope="session")
def tiny_encoder_onnx_dir(tmp_path_factory: pytest.TempPathFactory, _tiny_torch: None) -> Path:
    from kascade.runtime.models.encoder import export_encoder
    from kascade.testing.tiny_models import build_tiny_sentence_encoder

    root = tmp_path_factory.mktemp("tiny-encoder")
    return export_encoder(build_tiny_sentence_encoder(root / "source", seed=4), root / "onnx", max_tokens=24)


@dataclass
class ModelServer:
    """One `kascade serve` subprocess on a loopback port."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL, for `openai.OpenAI(base_url=...)` and tier configs."""
        return f"{self.base_url}/v1"

    def kill(self) -> None:
        """Die at once, as a crashed or OOM-killed tier would."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Shut down gracefully (SIGTERM), as Kubernetes would."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _launch(model_dir: Path, *, name: str, task: str, log_dir: Path) -> ModelServer:
    port = free_port()
    log_path = log_dir / f"{name}-{port}.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",  # tiny models: see _tiny_torch
        "PYTHONUNBUFFERED": "1",
        # A deprecated API on the serving path fails its tests now, not a user's install later.
        "PYTHONWARNINGS": "error::DeprecationWarning,error::FutureWarning",
    }
    command = [
        sys.executable,
        "-m",
        "kascade",
        "serve",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--served-model-name",
        name,
        "--task",
        task,
        "--device",
        "cpu",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    server = ModelServer(name=name, port=port, process=process, log_path=log_path)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kascade serve exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"kascade serve was not healthy after {SERVER_START_TIMEOUT_S} s:\n{server.log()}")


StartModelServer = Callable[..., ModelServer]


@dataclass
class _Launcher:
    log_dir: Path
    started: list[ModelServer] = field(default_factory=list)

    def __call__(self, model_dir: Path, *, name: str = "tiny", task: str = "generate") -> ModelServer:
        server = _launch(Path(model_dir), name=name, task=task, log_dir=self.log_dir)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def start_model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartModelServer]:
    launcher = _Launcher(tmp_path_factory.mktemp("model-server-logs"))
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="session")
def start_shared_model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartModelServer]:
    launcher = _Launcher(tmp_path_factory.mktemp("shared-model-server-logs"))
    shared: dict[tuple[Path, str, str], ModelServer] = {}

    def start(model_dir: Path, *, name: str = "tiny", task: str = "generate") -> ModelServer:
        key = (Path(model_dir), name, task)
        if key not in shared or shared[key].process.poll() is not None:
            shared[key] = launcher(model_dir, name=name, task=task)
        return shared[key]

    yield start
    launcher.stop_all()
