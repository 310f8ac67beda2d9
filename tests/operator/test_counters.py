"""The savings fold: restarts lose nothing, nothing counts twice, no total ever goes down."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kascade.api.modelcascade import ModelCascadeStatus, Price, TierStatus
from kascade.operator.counters import apply_merge_patch, fold_replica_counters
from kascade.runtime.ledger import Ledger, RequestOutcome, TierCall

PRICES = {
    "small": Price(input_per_million=0.1, output_per_million=0.2),
    "large": Price(input_per_million=1.0, output_per_million=2.0),
}

ACCEPTED = RequestOutcome("small", (TierCall("small", 1000, 500, 0.2, ok=True),), escalated=False)
ESCALATED = RequestOutcome(
    "large", (TierCall("small", 1000, 500, 0.2, ok=True), TierCall("large", 1000, 400, 1.5, ok=True)), escalated=True
)
FAILED = RequestOutcome(None, (TierCall("small", 0, 0, 0.1, ok=False), TierCall("large", 0, 0, 0.1, ok=False)), True)


class Clock:
    """A fake clock that ticks one second per reading: every process starts at its own time."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@dataclass
class Cluster:
    """Router pods, their ledgers, and the ModelCascade's status as the API server would hold it."""

    clock: Clock = field(default_factory=Clock)
    pods: dict[str, Ledger] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, dict[str, Any]] = field(default_factory=dict)  # processId -> last snapshot written
    names: itertools.count = field(default_factory=itertools.count)
    process_ids: itertools.count = field(default_factory=itertools.count)

    def start_pod(self) -> str:
        pod = f"chat-router-{next(self.names)}"
        self.pods[pod] = self._new_process()
        return pod

    def _new_process(self) -> Ledger:
        return Ledger(PRICES, process_id=f"p{next(self.process_ids):03d}", clock=self.clock)

    def serve(self, pod: str, *outcomes: RequestOutcome) -> None:
        for outcome in outcomes:
            self.pods[pod].record(outcome)

    def report(self, pod: str) -> None:
        """The router's merge patch of its own slot: its absolute snapshot."""
        snapshot = {**self.pods[pod].snapshot(), "pod": pod}
        self.status = apply_merge_patch(self.status, {"replicaCounters": {snapshot["processId"]: snapshot}})
        self.reported[snapshot["processId"]] = snapshot

    def restart(self, pod: str) -> None:
        self.pods[pod] = self._new_process()

    def stop(self, pod: str) -> None:
        del self.pods[pod]

    def now(self) -> str:
        return f"2025-06-15T00:00:{int(self.clock.now) % 60:02d}Z"

    def fold(self, live: set[str] | None = None, **kwargs: Any):
        result = fold_replica_counters(self.status, set(self.pods) if live is None else live, self.now(), **kwargs)
        self.status = apply_merge_patch(self.status, result.status_patch())
        return result

    def truth(self) -> dict[str, Any]:
        """Everything every process ever reported."""
        snaps = self.reported.values()
        answered: dict[str, int] = {}
        for snap in snaps:
            for tier, n in snap["answeredBy"].items():
                answered[tier] = answered.get(tier, 0) + n
        return {
            "requests": sum(s["requests"] for s in snaps),
            "errors": sum(s["failed"] for s in snaps),
            "escalations": sum(s["escalations"] for s in snaps),
            "answeredBy": {t: n for t, n in answered.items() if n},
            "actual": sum(s["cost"]["actual"] for s in snaps),
            "baseline": sum(s["cost"]["baseline"] for s in snaps),
        }


def writes(status: dict[str, Any], result) -> bool:
    """Whether the fold's patch would change `status` (the handler writes nothing otherwise)."""
    return apply_merge_patch(status, result.status_patch()) != status


def totals(result) -> dict[str, Any]:
    return {
        "requests": result.traffic.requests,
        "errors": result.traffic.errors,
        "escalations": result.traffic.escalations,
        "answeredBy": {t: n for t, n in result.traffic.answered_by.items() if n},
        "actual": pytest.approx(result.cost.actual, rel=1e-9, abs=1e-15),
        "baseline": pytest.approx(result.cost.baseline, rel=1e-9, abs=1e-15),
    }


def test_a_restart_mid_traffic_neither_drops_nor_double_counts() -> None:
    cluster = Cluster()
    pod = cluster.start_pod()
    cluster.serve(pod, *[ACCEPTED] * 7, *[ESCALATED] * 3)
    cluster.report(pod)
    first = cluster.fold()
    assert first.traffic.requests == 10 and first.retired == ()

    cluster.restart(pod)  # the container restarts: a new process, same pod; the old slot stays
    cluster.serve(pod, ACCEPTED, ACCEPTED)
    before_report = cluster.fold()
    assert before_report.traffic.requests == 10  # the old slot still counts while the new one is silent
    cluster.report(pod)
    assert set(cluster.status["replicaCounters"]) == {"p000", "p001"}

    after = cluster.fold()
    assert after.retired == ("p000",)
    assert after.traffic.requests == 12
    assert after.traffic.answered_by == {"large": 3, "small": 9}
    assert after.traffic.escalations == 3
    assert after.traffic.escalation_rate == pytest.approx(3 / 12)
    assert after.status_patch()["replicaCounters"] == {"p000": None}
    assert set(cluster.status["replicaCounters"]) == {"p001"}
    assert cluster.status["retiredCounters"]["requests"] == 10
    assert cluster.status["retiredCounters"]["processes"] == 1
    assert totals(after) == cluster.truth()
    assert after.guarded == ()


def test_a_removed_replica_keeps_its_numbers_in_retired() -> None:
    cluster = Cluster()
    one, two = cluster.start_pod(), cluster.start_pod()
    cluster.serve(one, ACCEPTED, ESCALATED)
    cluster.serve(two, ACCEPTED, ACCEPTED, FAILED)
    cluster.report(one)
    cluster.report(two)
    assert cluster.fold().traffic.requests == 5
    cluster.stop(two)  # scaled down
    result = cluster.fold()
    assert result.retired == ("p001",)
    assert result.traffic.requests == 5 and result.traffic.errors == 1
    assert cluster.status["retiredCounters"]["requests"] == 3
    assert cluster.status["retiredProcesses"]["p001"]["pod"] == two
    assert totals(result) == cluster.truth()


def test_folding_is_idempotent() -> None:
    cluster = Cluster()
    pod = cluster.start_pod()
    cluster.serve(pod, ACCEPTED, ESCALATED)
    cluster.report(pod)
    cluster.restart(pod)
    cluster.serve(pod, ACCEPTED)
    cluster.report(pod)
    status = cluster.status
    # The same input gives the same output.
    assert fold_replica_counters(status, {pod}, "t") == fold_replica_counters(status, {pod}, "t")
    before = cluster.status
    first = cluster.fold()
    assert writes(before, first)
    before = cluster.status
    second = cluster.fold()
    assert not writes(before, second)  # a no-op: the handler writes nothing
    assert totals(second) == totals(first) == cluster.truth()
    assert second.retired == ()


def test_the_same_absolute_snapshot_written_twice_counts_once() -> None:
    cluster = Cluster()
    pod = cluster.start_pod()
    cluster.serve(pod, ACCEPTED, ACCEPTED)
    cluster.report(pod)
    cluster.fold()
    cluster.report(pod)  # a retried write, same numbers
    cluster.report(pod)
    before = cluster.status
    result = cluster.fold()
    assert result.traffic.requests == 2
    assert not writes(before, result)


def test_a_retired_process_writing_again_counts_only_what_is_new() -> None:
    """A pod list that missed a live pod retires its slot; the router then writes its slot again."""
    cluster = Cluster()
    pod = cluster.start_pod()
    cluster.serve(pod, ACCEPTED, ACCEPTED, ESCALATED)
    cluster.report(pod)
    stale = cluster.fold(live=set())
    assert stale.retired == ("p000",) and stale.traffic.requests == 3
    cluster.serve(pod, ACCEPTED)
    cluster.report(pod)  # absolute: 4 requests, 3 of them already retired
    result = cluster.fold()
    assert result.traffic.requests == 4
    assert cluster.status["retiredCounters"]["processes"] == 1
    cluster.stop(pod)
    final = cluster.fold()
    assert final.traffic.requests == 4
    assert cluster.status["retiredCounters"]["requests"] == 4
    assert totals(final) == cluster.truth()


def test_the_monotonic_guard_holds_totals_up_and_says_so() -> None:
    previous = {
        "traffic": {"requests": 100, "answeredBy": {"small": 90, "large": 10}, "escalations": 10, "errors": 0},
        "cost": {"currency": "USD", "actual": 1.0, "baseline": 5.0, "gpuHours": 12.5},
        "replicaCounters": {
            "p9": {
                "processId": "p9",
                "pod": "r-1",
                "startedAt": "2025-01-01T00:00:00.000Z",
                "requests": 40,
                "failed": 0,
                "escalations": 4,
                "answeredBy": {"small": 36, "large": 4},
                "cost": {"actual": 0.4, "baseline": 2.0},
                "currency": "USD",
            }
        },
    }
    result = fold_replica_counters(previous, {"r-1"}, "2025-01-01T01:00:00Z")
    assert result.traffic.requests == 100
    assert result.traffic.answered_by == {"large": 10, "small": 90}
    assert result.cost.actual == 1.0 and result.cost.baseline == 5.0
    assert result.cost.saved == 4.0 and result.cost.saved_percent == pytest.approx(80.0)
    assert result.cost.gpu_hours == 12.5  # not the fold's to change
    assert any(g.startswith("traffic.requests") for g in result.guarded)
    assert any(g.startswith("cost.actual") for g in result.guarded)


def test_cost_summary_and_since() -> None:
    cluster = Cluster()
    one = cluster.start_pod()
    cluster.serve(one, *[ACCEPTED] * 3, ESCALATED)
    cluster.report(one)
    earliest = cluster.reported["p000"]["startedAt"]
    cluster.restart(one)
    cluster.serve(one, ACCEPTED)
    cluster.report(one)
    result = cluster.fold(tiers=[TierStatus(name="small", ready_replicas=1), TierStatus(name="large", ready=True)])
    assert result.cost.since == earliest
    assert result.cost.currency == "USD"
    assert result.cost.saved == pytest.approx(result.cost.baseline - result.cost.actual)
    assert result.cost.saved_percent == pytest.approx(100 * result.cost.saved / result.cost.baseline)
    assert result.summary.tiers == "2/2"
    assert result.summary.escalation == "20.0%"
    assert result.summary.saved.startswith("USD ")
    patch = result.status_patch()
    assert set(patch) >= {"traffic", "cost", "summary", "retiredCounters", "retiredProcesses", "replicaCounters"}
    assert "gpuHours" not in patch["cost"]
    assert patch["traffic"]["answeredBy"] == {"large": 1, "small": 4}


def test_status_model_input_with_extra_fields() -> None:
    cluster = Cluster()
    pod = cluster.start_pod()
    cluster.serve(pod, ACCEPTED)
    cluster.report(pod)
    cluster.stop(pod)
    cluster.fold()
    model = ModelCascadeStatus.model_validate(cluster.status)
    result = fold_replica_counters(model, set(), "t")
    assert result.traffic.requests == 1
    assert not writes(model.model_dump(mode="json", by_alias=True, exclude_none=True), result)


def test_old_credits_are_pruned_but_never_while_their_slot_is_there() -> None:
    cluster = Cluster()
    pod = cluster.start_pod()
    for _ in range(5):
        cluster.serve(pod, ACCEPTED)
        cluster.report(pod)
        cluster.restart(pod)
    cluster.report(pod)
    result = cluster.fold(keep_retired=2)
    assert result.retired == ("p000", "p001", "p002", "p003", "p004")
    assert set(cluster.status["retiredProcesses"]) == {"p003", "p004"}
    assert set(result.pruned) == {"p000", "p001", "p002"}
    assert result.traffic.requests == 5
    assert cluster.status["retiredCounters"]["processes"] == 5


def test_garbage_in_a_slot_is_read_as_zero_with_a_warning() -> None:
    status = {
        "replicaCounters": {
            "bad": "not an object",
            "neg": {"pod": "r", "startedAt": "2025-01-01T00:00:00Z", "requests": -5, "answeredBy": {"small": "x"}},
        }
    }
    result = fold_replica_counters(status, {"r"}, "t")
    assert result.traffic.requests == 0
    assert result.retired == ("bad",)
    assert any("neg.requests" in w for w in result.warnings)
    assert any("answeredBy.small" in w for w in result.warnings)


# --- The property: any sequence of router events ------------------------------------

outcomes = st.sampled_from([ACCEPTED, ESCALATED, FAILED])
events = st.one_of(
    # serve some requests, then (usually) report, as the router does on its timer
    st.tuples(st.just("serve"), st.integers(0, 7), st.lists(outcomes, min_size=1, max_size=4), st.booleans()),
    st.tuples(st.just("report"), st.integers(0, 7)),
    st.tuples(st.just("report_twice"), st.integers(0, 7)),
    st.tuples(st.just("restart"), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("scale_down"), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("scale_up")),
    # the operator folds; sometimes with a pod list that misses live pods (bit i: pod i listed)
    st.tuples(st.just("fold"), st.none() | st.integers(0, 255)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, min_size=10, max_size=80))
def test_folded_totals_equal_everything_ever_reported_and_never_decrease(steps: list[tuple]) -> None:
    cluster = Cluster()
    cluster.start_pod()
    last: dict[str, Any] | None = None

    def fold(live: set[str] | None = None) -> None:
        nonlocal last
        result = cluster.fold(live)
        assert totals(result) == cluster.truth()
        assert result.guarded == (), result.guarded  # with honest routers the guard never has to act
        if last is not None:
            assert result.traffic.requests >= last["requests"]
            assert result.traffic.escalations >= last["escalations"]
            assert result.traffic.errors >= last["errors"]
            assert result.cost.actual >= last["actual"] and result.cost.baseline >= last["baseline"]
            assert all(result.traffic.answered_by.get(t, 0) >= n for t, n in last["answeredBy"].items())
        last = {**totals(result), "actual": result.cost.actual, "baseline": result.cost.baseline}
        again = fold_replica_counters(cluster.status, set(cluster.pods) if live is None else live, "later")
        assert not writes(cluster.status, again)  # idempotent

    for step in steps:
        pods = sorted(cluster.pods)
        kind = step[0]
        if kind == "scale_up" or not pods:
            cluster.start_pod()
            continue
        if kind == "fold":
            mask = step[1]
            fold(None if mask is None else {pod for i, pod in enumerate(pods) if (mask >> (i % 8)) & 1})
            continue
        pod = pods[step[1] % len(pods)]
        if kind == "serve":
            cluster.serve(pod, *step[2])
            if step[3]:
                cluster.report(pod)
        elif kind == "report":
            cluster.report(pod)
        elif kind == "report_twice":
            cluster.report(pod)
            cluster.report(pod)
        elif kind in ("restart", "scale_down"):
            if step[2]:  # graceful: the router writes its last numbers on SIGTERM
                cluster.report(pod)
            cluster.restart(pod) if kind == "restart" else cluster.stop(pod)
    for pod in sorted(cluster.pods):
        cluster.report(pod)
    fold()
    for pod in sorted(cluster.pods):
        cluster.stop(pod)
    fold()
    assert cluster.status.get("replicaCounters", {}) == {}
    assert cluster.status["retiredCounters"]["requests"] == cluster.truth()["requests"]
