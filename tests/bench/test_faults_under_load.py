"""bench/faults_under_load.py: how it reads a phase (pure), and a few seconds of it end to end (slow).

The smoke run asserts what a user of the router would notice under each fault, never a time: every request
gets an answer or an error with an OpenAI-style body, none hangs, and the routers count what the client saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kascade.api.counters import CounterSlot

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import faults_under_load as bench

TIMEOUT = 1.0


def settings(**changed) -> bench.Settings:
    fields = {
        "rate": 10.0,
        "lead_seconds": 1.0,
        "fault_seconds": 1.0,
        "recovery_seconds": 1.0,
        "timeout_seconds": TIMEOUT,
        "retries": 1,
        "backoff_seconds": 0.05,
        "max_in_flight": 4,
        "max_queue": 8,
        "queue_timeout_seconds": 0.5,
        "on_escalation_full": "wait",
        "overload_factor": 3.0,
    }
    return bench.Settings(**(fields | changed))


def sent(at: float, *, outcome: str = "answered", tier: str | None = "small", latency: float = 0.01, **extra):
    return bench.Sent(sent_at=at, replica="router-a", outcome=outcome, tier=tier, latency=latency, **extra)


def phase(records: list[bench.Sent], *, fault: tuple[float, float] | None = (1.0, 2.0), **extra) -> bench.PhaseResult:
    began, ended = fault if fault is not None else (None, None)
    fields = {"router_counted": {}, "client_counted": {}, "rss_mb": [], "rss_end_mb": None, "stopped_replica_at": None}
    return bench.PhaseResult("p", began, ended, records, **(fields | extra))


def usual_mix(start: float, count: int, step: float = 0.1) -> list[bench.Sent]:
    """Requests in the usual mix: seven in ten answered by the small tier."""
    return [sent(start + i * step, tier="small" if i % 10 >= 3 else "large") for i in range(count)]


def test_recovery_is_measured_from_the_fault_end_to_the_first_request_after_which_all_are_normal():
    during = [sent(1.5, outcome="error", tier=None, status=503)]
    late = [sent(2.05, tier="large", trail="small=error,large")]  # the tier failed on it: not yet recovered
    records = during + late + usual_mix(2.3, 30)
    assert bench.recovery_seconds(phase(records), TIMEOUT) == pytest.approx(0.3)


def test_an_answer_slower_than_one_attempt_is_not_recovered():
    records = usual_mix(2.0, 30)
    records[-1].latency = 1.5 * TIMEOUT
    assert bench.recovery_seconds(phase(records), TIMEOUT) is None


def test_answers_off_the_usual_tier_mix_are_not_recovered():
    records = [sent(2.0 + i * 0.1, tier="large") for i in range(30)]  # all escalated
    assert bench.recovery_seconds(phase(records), TIMEOUT) is None


def test_a_phase_without_a_fault_has_nothing_to_recover_from():
    assert bench.recovery_seconds(phase(usual_mix(0.0, 10), fault=None), TIMEOUT) == 0.0


def test_the_client_counts_every_request_that_reached_a_router_and_what_answered_it():
    records = [
        sent(0.0, tier="small"),
        sent(0.1, tier="large"),
        sent(0.2, outcome="error", tier=None, status=502),
        sent(0.3, outcome="hung", tier=None),
        sent(0.4, outcome="transport", tier=None),  # no HTTP answer: not known to have reached a router
        sent(0.5, outcome="error", tier=None, status=429, retry_after=True),
        sent(0.6, tier="small", kept_under_load=True),
    ]
    assert bench.client_counts(records) == {
        "requests": 6,
        "failed": 3,
        "rejected": 1,
        "keptUnderLoad": 1,
        "answeredBy.small": 2,
        "answeredBy.large": 1,
    }


def test_the_routers_counts_are_summed_over_processes_a_new_process_counting_from_zero():
    def slot(pid: str, requests: int, failed: int, small: int, large: int, rejected: int = 0) -> CounterSlot:
        return CounterSlot(
            process_id=pid,
            requests=requests,
            failed=failed,
            answered_by={"small": small, "large": large},
            rejected={"small": rejected} if rejected else {},
        )

    before = {"a1": slot("a1", 10, 1, 6, 3, rejected=1), "b": slot("b", 10, 0, 7, 3)}
    after = {
        "a1": slot("a1", 12, 1, 8, 3, rejected=1),
        "b": slot("b", 15, 1, 10, 4, rejected=1),
        "a2": slot("a2", 3, 0, 2, 1),
    }
    assert bench.counted_since(before, after) == {
        "requests": 10,
        "failed": 1,
        "rejected": 1,
        "keptUnderLoad": 0,
        "answeredBy.small": 7,
        "answeredBy.large": 2,
    }


def test_a_phase_reports_lost_counts_and_errors_without_an_openai_body():
    records = [sent(0.0), sent(0.1, outcome="error", tier=None, status=500, clear_body=False)]
    result = phase(
        records,
        fault=None,
        router_counted={
            "requests": 1,
            "failed": 0,
            "rejected": 0,
            "keptUnderLoad": 0,
            "answeredBy.small": 1,
            "answeredBy.large": 0,
        },
        client_counted=bench.client_counts(records),
    )
    row = bench.summarize(result, settings())
    assert row["lost"] == {"requests": -1, "failed": -1}
    assert row["errors"] == {"500": 1}
    assert row["errors_without_openai_body"] == 1


def test_what_a_stopped_replica_held_is_the_requests_in_flight_at_its_sigterm():
    records = [
        sent(0.5, latency=0.1),  # done before
        sent(0.9, latency=0.3),  # in flight, answered
        sent(0.95, outcome="hung", latency=None),
        sent(1.1, latency=0.01),  # sent after
    ]
    assert bench.in_flight_at(phase(records, stopped_replica_at=1.0), "router-a") == {"answered": 1, "hung": 1}
    assert bench.in_flight_at(phase(records), "router-a") is None


def test_an_openai_error_body_has_a_message_and_a_type():
    assert bench.is_openai_error({"error": {"message": "the answering tier failed", "type": "BadGatewayError"}})
    assert not bench.is_openai_error({"detail": "Internal Server Error"})
    assert not bench.is_openai_error({"error": {"message": "", "type": "X"}})
    assert not bench.is_openai_error(["error"])


def test_the_clients_deadline_is_past_the_longest_a_request_can_take_in_the_router():
    chosen = settings(timeout_seconds=1.0, retries=1, backoff_seconds=0.05, queue_timeout_seconds=0.5)
    assert chosen.router_deadline == pytest.approx(2 * (0.5 + 2 * 1.0 + 0.05))  # a queue, then two attempts, per tier
    assert chosen.client_deadline > chosen.router_deadline


@pytest.mark.slow
def test_a_few_seconds_of_faults_answer_every_request_clearly_and_lose_no_count(tmp_path: Path):
    report = tmp_path / "faults.json"
    phases = "steady,small-killed,large-5xx,router-restart,overload"
    # Admission bounds that the overload phase exceeds (each tier serves a few requests at once there).
    bounds = ["--max-in-flight", "2", "--max-queue", "4", "--queue-timeout", "0.5"]
    command = [sys.executable, str(BENCH / "faults_under_load.py"), "--quick", "--phases", phases, *bounds]
    done = subprocess.run([*command, "--json", str(report)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["phase"]: row for row in json.loads(report.read_text())["phases"]}
    assert list(rows) == ["steady", "small killed", "large 5xx", "router restart", "overload"]
    for row in rows.values():
        assert row["hung"] == 0, row
        assert row["lost"] == {}, row
        assert row["errors_without_openai_body"] == 0, row
        assert row["transport_errors"] == 0, row
        assert sum(row["answered"].values()) + sum(row["errors"].values()) == row["sent"], row
    assert rows["steady"]["errors"] == {}
    assert rows["small killed"]["errors"] == {}  # the large tier answers what the small one cannot
    assert set(rows["large 5xx"]["errors"]) == {"502"}  # the escalated requests, with a body
    assert rows["router restart"]["errors"] == {}
    assert rows["router restart"]["redirected"] > 0
    overloaded = rows["overload"]
    assert set(overloaded["errors"]) == {"429"}  # refused before any tier is called, never left to time out
    assert overloaded["errors_with_retry_after"] == overloaded["errors"]["429"]
