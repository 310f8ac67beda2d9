"""`kascade distill --report-to`: the run's progress and result land in its Distillation's status.

The real `kascade distill` (a subprocess, tiny local models) writes to the
API-server stand-in, which holds Kascade's CRDs and validates every status
write against the Distillation's schema, as the operator would read it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typer.testing import CliRunner

from kascade.cli import app
from kascade.distillation.report import USER_AGENT, DistillationReportConfig, DistillationReporter, ReportError
from kascade.distillation.status import Throttle, parse_report_target
from kascade.runtime.serving import BackgroundServer

pytest.importorskip("kmock")
from kascade.testing import StandinApiServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NS = "llm"
STEPS = 4
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def server() -> Iterator[StandinApiServer]:
    with StandinApiServer(crd_paths=[REPO / "crds"]) as running:
        running.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        yield running


def create_distillation(server: StandinApiServer, name: str) -> None:
    server.create(
        {
            "apiVersion": "kascade.dev/v1alpha1",
            "kind": "Distillation",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "cascade": "chat",
                "tier": "small",
                "student": "pvc://models/student",
                "data": "pvc://logs/escalations",
                "output": f"pvc://models/runs/{name}",
            },
        }
    )


def status_of(server: StandinApiServer, name: str) -> dict[str, Any]:
    return (server.get("distillations", name, NS) or {}).get("status") or {}


def status_writes(server: StandinApiServer, name: str, since: int) -> list[Any]:
    return [w for w in server.writes(since=since) if w.resource == "distillations" and w.name == name]


def distill(*args: str, interval: str = "10") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KASCADE_DISTILL_REPORT_INTERVAL_SECONDS": interval, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return subprocess.run(
        [sys.executable, "-m", "kascade", "distill", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=240,
        check=False,
    )


def run_args(server: StandinApiServer, name: str, student: Path, data: Path, out: Path) -> list[str]:
    return [
        "--student",
        str(student),
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        str(STEPS),
        "--batch-size",
        "4",
        "--eval-generate",
        "2",
        "--max-new-tokens",
        "3",
        "--held-out",
        "0.25",
        "--report-to",
        f"{NS}/{name}",
        "--api-server",
        server.url,
        "--token-file",
        str(out.parent / "no-token"),
    ]


def test_a_run_reports_its_start_every_step_and_its_result(
    server: StandinApiServer, tiny_small_lm_dir: Path, answers_file: Callable[[int], Path], tmp_path: Path
) -> None:
    create_distillation(server, "run-ok")
    mark = server.mark()
    args = run_args(server, "run-ok", tiny_small_lm_dir, answers_file(12), tmp_path / "out")
    done = distill(*args, "--model-uri", "pvc://models/runs/run-ok", interval="0")
    assert done.returncode == 0, done.stdout + done.stderr

    status = status_of(server, "run-ok")
    assert status["phase"] == "Succeeded"
    assert (
        status["progress"]["step"] == status["progress"]["steps"] == STEPS
        and status["progressText"] == f"{STEPS}/{STEPS}"
    )
    assert RFC3339.match(status["startedAt"]) and RFC3339.match(status["finishedAt"])
    assert status["examples"] + status["heldOut"] == 12 and status["model"] == "pvc://models/runs/run-ok"
    assert {"answerAgreement", "tokenAgreement", "loss"} <= set(status["before"]) & set(status["after"])
    gate = status["gate"]
    assert isinstance(gate["passed"], bool)
    assert status["message"] == ("gate passed" if gate["passed"] else "gate failed: " + "; ".join(gate["reasons"]))
    assert status["gainText"] == ("" if gate.get("gain") is None else f"{gate['gain']:+.4f}")
    writes = status_writes(server, "run-ok", mark)
    assert {(w.user_agent, w.content_type, w.subresource, w.status) for w in writes} == {
        (USER_AGENT, "application/merge-patch+json", "status", 200)
    }
    # With an interval of 0 every step is written: the start, each step, the result.
    assert [w.body["status"].get("progressText") for w in writes] == [f"{s}/{STEPS}" for s in range(STEPS + 1)] + [
        f"{STEPS}/{STEPS}"
    ]
    assert writes[0].body["status"]["phase"] == "Running"


def test_a_run_with_the_default_interval_writes_its_start_and_its_result_only(
    server: StandinApiServer, tiny_small_lm_dir: Path, answers_file: Callable[[int], Path], tmp_path: Path
) -> None:
    create_distillation(server, "run-quiet")
    mark = server.mark()
    done = distill(*run_args(server, "run-quiet", tiny_small_lm_dir, answers_file(12), tmp_path / "out"))
    assert done.returncode == 0, done.stdout + done.stderr
    phases = [w.body["status"].get("phase") for w in status_writes(server, "run-quiet", mark)]
    assert phases == ["Running", "Succeeded"]  # a few seconds of training: no progress write in between
    assert status_of(server, "run-quiet")["model"] == str((tmp_path / "out").resolve())  # no --model-uri


def test_a_run_with_bad_data_ends_failed_with_the_reason(
    server: StandinApiServer, tiny_small_lm_dir: Path, tmp_path: Path
) -> None:
    create_distillation(server, "run-bad")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "no answer"}\n')
    done = distill(*run_args(server, "run-bad", tiny_small_lm_dir, bad, tmp_path / "out"))
    assert done.returncode == 2 and "a line needs an `answer`" in done.stdout
    status = status_of(server, "run-bad")
    assert status["phase"] == "Failed" and "bad.jsonl:1: a line needs an `answer`" in status["message"]
    assert RFC3339.match(status["finishedAt"])


def test_a_result_that_cannot_be_written_fails_the_command(
    server: StandinApiServer, tiny_small_lm_dir: Path, answers_file: Callable[[int], Path], tmp_path: Path
) -> None:
    """The Distillation is deleted once the run has reported its start: the result has nowhere to go."""
    create_distillation(server, "run-gone")

    def delete_when_running() -> None:
        server.wait_for(lambda: status_of(server, "run-gone").get("phase") == "Running", timeout=120, interval=0.01)
        server.delete("distillations", "run-gone", namespace=NS)

    deleter = threading.Thread(target=delete_when_running, daemon=True)
    deleter.start()
    done = distill(*run_args(server, "run-gone", tiny_small_lm_dir, answers_file(12), tmp_path / "out"))
    deleter.join(timeout=5)
    assert done.returncode == 2
    assert "could not write the status of Distillation llm/run-gone: HTTP 404" in done.stdout
    assert "its result is not reported" in done.stdout and (tmp_path / "out" / "provenance.json").exists()


def test_a_run_whose_distillation_is_missing_stops_before_training(
    server: StandinApiServer, tiny_small_lm_dir: Path, answers_file: Callable[[int], Path], tmp_path: Path
) -> None:
    done = distill(*run_args(server, "no-such-run", tiny_small_lm_dir, answers_file(12), tmp_path / "out"))
    assert done.returncode == 2 and "Distillation llm/no-such-run: HTTP 404" in done.stdout
    assert not (tmp_path / "out" / "provenance.json").exists()


def test_an_api_server_that_cannot_be_reached_is_a_transient_failure_the_job_retries(
    server: StandinApiServer, tiny_small_lm_dir: Path, answers_file: Callable[[int], Path], tmp_path: Path
) -> None:
    """Exit 3, not 2: the Job's podFailurePolicy fails the Job at once only on 2 (a refusal)."""
    from kascade.runtime.serving import free_port

    args = run_args(server, "run-unreachable", tiny_small_lm_dir, answers_file(12), tmp_path / "out")
    args[args.index("--api-server") + 1] = f"http://127.0.0.1:{free_port()}"
    done = distill(*args)
    assert done.returncode == 3 and "could not write the status of Distillation llm/run-unreachable" in done.stdout


def test_a_malformed_report_target_is_refused_by_the_cli(tiny_small_lm_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "distill",
            "--student",
            str(tiny_small_lm_dir),
            "--data",
            "x.jsonl",
            "--out",
            str(tmp_path / "o"),
            "--report-to",
            "just-a-name",
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 2 and "'just-a-name' is not NAMESPACE/NAME of a Distillation" in result.output


@pytest.mark.parametrize(
    "value", ["just-a-name", "llm/", "/run-1", "LLM/run-1", "llm/run/1", "llm/Run-1", f"{'n' * 64}/run"]
)
def test_a_report_target_is_namespace_slash_name(value: str) -> None:
    assert parse_report_target("llm/chat-distill.2") == ("llm", "chat-distill.2")
    with pytest.raises(ValueError, match="is not NAMESPACE/NAME of a Distillation"):
        parse_report_target(value)


def test_progress_writes_are_throttled_to_one_per_interval() -> None:
    throttle = Throttle(interval=10)
    assert [now for now in (0, 1, 9.9, 10, 15, 19.9, 20, 35, 36) if throttle.due(now)] == [0, 10, 20, 35]
    assert [now for now in (0, 0, 0.1) if Throttle(interval=0).due(now)] == [0, 0, 0.1]


def test_the_reporter_writes_progress_at_most_every_interval_counted_from_its_start(server: StandinApiServer) -> None:
    create_distillation(server, "run-clock")
    now = [0.0]
    config = DistillationReportConfig(
        namespace=NS, name="run-clock", api_server=server.url, token_file="/no/token", interval_seconds=10
    )
    mark = server.mark()
    with DistillationReporter(config, clock=lambda: now[0]) as reporter:
        reporter.start(30)
        for step in range(1, 31):
            now[0] = float(step)  # one step a second
            reporter.progress(step, loss=1.0 / step)
    texts = [w.body["status"]["progressText"] for w in status_writes(server, "run-clock", mark)]
    assert texts == ["0/30", "10/30", "20/30", "30/30"]
    assert status_of(server, "run-clock")["progress"] == {"step": 30, "steps": 30, "loss": pytest.approx(1 / 30)}


def flaky_api_server(answers: list[int], seen: list[dict[str, Any]]) -> Starlette:
    """Answers each status write with the next code of `answers` (200 once they run out), and records it."""

    async def patch_status(request: Request) -> JSONResponse:
        seen.append({"authorization": request.headers.get("authorization"), "body": await request.json()})
        code = answers.pop(0) if answers else 200
        return JSONResponse({"kind": "Status", "message": f"answered {code}"}, status_code=code)

    return Starlette(
        routes=[
            Route(
                "/apis/kascade.dev/v1alpha1/namespaces/{ns}/distillations/{name}/status",
                patch_status,
                methods=["PATCH"],
            )
        ]
    )


def test_the_result_is_retried_through_server_errors_and_conflicts_with_growing_waits(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    waits: list[float] = []
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    with BackgroundServer(flaky_api_server([503, 409, 500], seen)) as api:
        config = DistillationReportConfig(namespace=NS, name="r", api_server=api.url, token_file=str(token))
        with DistillationReporter(config, sleep=waits.append) as reporter:
            reporter.fail("the student could not be loaded")
    assert len(seen) == 4 and waits == [0.5, 1.0, 2.0]
    assert seen[-1]["body"]["status"]["message"] == "the student could not be loaded"
    assert seen[-1]["authorization"] == "Bearer sa-token"


def test_a_refused_write_is_not_retried_and_a_lost_progress_write_does_not_stop_the_run(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    with BackgroundServer(flaky_api_server([403, 503], seen)) as api:
        config = DistillationReportConfig(
            namespace=NS, name="r", api_server=api.url, token_file=str(tmp_path / "none"), interval_seconds=0
        )
        with DistillationReporter(config, sleep=lambda s: None) as reporter:
            with pytest.raises(ReportError, match="HTTP 403: answered 403"):
                reporter.start(5)
            reporter.progress(1, 0.5)  # 503: logged, not raised, not retried
            reporter.progress(2, 0.4)
    assert [s["body"]["status"]["progressText"] for s in seen] == ["0/5", "1/5", "2/5"]
    assert seen[0]["authorization"] is None  # no token file: no Authorization header


def test_an_unreachable_api_server_is_retried_and_no_api_server_at_all_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from kascade.runtime.serving import free_port

    waits: list[float] = []
    config = DistillationReportConfig(
        namespace=NS, name="r", api_server=f"http://127.0.0.1:{free_port()}", token_file="/no/token", attempts=3
    )
    with DistillationReporter(config, sleep=waits.append) as reporter, pytest.raises(ReportError, match="ConnectError"):
        reporter.start(5)
    assert waits == [0.5, 1.0]
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    outside = config.model_copy(update={"api_server": None})
    with (
        DistillationReporter(outside, sleep=waits.append) as reporter,
        pytest.raises(ReportError, match="not running in a cluster"),
    ):
        reporter.start(5)
    assert waits == [0.5, 1.0]  # nothing to retry
