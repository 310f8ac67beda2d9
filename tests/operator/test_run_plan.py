"""The distillation step's plan (pure: runs and Jobs in, actions out) and the small loop that applies it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from kascade.api.distillation import Distillation, PromotionReason
from kascade.api.modelcascade import ModelCascade
from kascade.api.times import format_time
from kascade.operator.build_distillation import build_distillation
from kascade.operator.cascade_writes import Target
from kascade.operator.kube_api import ApiError
from kascade.operator.run_plan import (
    NO_POLICY,
    CreateJob,
    CreateRun,
    DeleteJob,
    DeleteRun,
    FailRun,
    ObservedRun,
    ObservedRuns,
    PostNotice,
    RecordJob,
    WithdrawPromotion,
    WriteDecision,
    needs_job,
    plan_distillation,
)
from kascade.operator.settings import OperatorSettings

SETTINGS = OperatorSettings()
NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
AT = format_time(NOW)
SMALL = "pvc://models/small-v1"


def cascade(uri: str = SMALL, *, distils: bool = True, **policy: Any) -> ModelCascade:
    spec: dict[str, Any] = {
        "tiers": [
            {"name": "small", "model": {"uri": uri}, "accept": {"method": "geometricMean", "threshold": 0.5}},
            {"name": "large", "model": {"uri": "hf://org/large"}, "resources": {"gpus": 1}},
        ],
        "escalationLog": {"enabled": True, "uri": "pvc://escalations/chat"},
    }
    if distils:
        spec["distillation"] = {"outputUri": "pvc://students/chat", "minSamples": 100, **policy}
    return ModelCascade.model_validate(
        {"apiVersion": "kascade.dev/v1alpha1", "kind": "ModelCascade", "metadata": {"name": "chat"}, "spec": spec}
    )


def listed(name: str, *, hours_ago: float = 1, log_records: int = 0, **status: Any) -> dict[str, Any]:
    """A run as the API server lists it."""
    manifest = build_distillation(cascade(), SETTINGS, name=name, log_records=log_records)
    manifest["metadata"].update(
        creationTimestamp=format_time(NOW - timedelta(hours=hours_ago)), uid=f"uid-{name}", resourceVersion="7"
    )
    if status:
        manifest["status"] = status
    return manifest


def seen(raw: dict[str, Any], job: dict[str, Any] | None = None) -> ObservedRun:
    return ObservedRun(Distillation.model_validate(raw), raw, job)


def job(condition: str | None = None, reason: str = "", message: str = "") -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True", "reason": reason, "message": message}] if condition else []
    return {"apiVersion": "batch/v1", "kind": "Job", "status": {"conditions": conditions}}


def plan(spec: ModelCascade, *runs: ObservedRun, logged: int = 0) -> Any:
    observed = ObservedRuns(list(runs), logged=logged, cascade_created=NOW - timedelta(days=1))
    return plan_distillation(spec, observed, SETTINGS, now=NOW)


PASSED = {"passed": True, "gain": 0.05}
STUDENT = "pvc://students/chat/chat-d1"
PROMOTED = {"promoted": True, "reason": "Promoted", "previousModel": SMALL, "replaces": SMALL, "at": "t"}


def test_a_run_without_a_job_gets_one_owned_by_the_run_and_waits():
    raw = listed("chat-d1")
    planned = plan(cascade(), seen(raw), logged=10_000)
    create, record = planned.actions
    assert isinstance(create, CreateJob) and create.owner is raw and create.manifest["kind"] == "Job"
    assert record == RecordJob("chat-d1") and record.patch == {"job": "chat-d1", "message": "Job chat-d1 created"}
    assert planned.status["distillation"]["waiting"] == "run chat-d1 is Pending", "one run at a time"
    again = plan(cascade(), seen(listed("chat-d1", phase="Pending", job="chat-d1")))
    assert [type(action) for action in again.actions] == [CreateJob], "the status names it already"


def test_a_job_that_failed_fails_the_run_over_what_was_read_and_decides_it_at_once():
    planned = plan(cascade(), seen(listed("chat-d1", phase="Running"), job("Failed", "BackoffLimitExceeded", "x")))
    fail, decision, notice = planned.actions
    assert fail == FailRun("chat-d1", "the Job failed (BackoffLimitExceeded): x", AT, resource_version="7")
    assert fail.patch == {"phase": "Failed", "message": fail.message, "finishedAt": AT}
    assert isinstance(decision, WriteDecision) and decision.promotion.reason == PromotionReason.run_failed
    assert isinstance(notice, PostNotice) and notice.notice.reason == "NotPromoted"
    assert planned.status["distillation"]["lastDecision"] == "RunFailed"
    completed = plan(cascade(), seen(listed("chat-d1", phase="Running"), job("Complete")))
    assert completed.actions[0].message == "the Job completed but the run reported no result (see the pod's log)"


def test_a_run_the_pod_failed_waits_while_its_job_may_retry_it():
    retrying = seen(listed("chat-d1", phase="Failed", message="CUDA out of memory"), job())
    assert plan(cascade(), retrying, logged=10_000).actions == []
    stopped = seen(listed("chat-d1", phase="Failed", message="CUDA out of memory"), job("Failed"))
    [decision, _] = plan(cascade(), stopped).actions
    assert isinstance(decision, WriteDecision) and decision.promotion.message == "CUDA out of memory"


def test_a_passed_gate_is_promoted_and_served_in_the_same_plan():
    done = seen(listed("chat-d1", phase="Succeeded", model=STUDENT, gate=PASSED))
    planned = plan(cascade(), done)
    decision, notice = planned.actions
    assert isinstance(decision, WriteDecision) and decision.promotion.promoted
    assert notice.notice.reason == "Promoted"
    assert planned.served.spec.tiers[0].model.uri == STUDENT, "the builders build the promoted model"
    assert planned.status["distillation"]["serving"] == STUDENT


def test_a_pin_withdraws_the_promotion_and_serves_model_uri():
    record = seen(listed("chat-d1", phase="Succeeded", model=STUDENT, gate=PASSED, promotion=PROMOTED))
    planned = plan(cascade("pvc://models/small-by-hand"), record)
    withdraw, notice = planned.actions
    assert isinstance(withdraw, WithdrawPromotion) and "(a pin)" in withdraw.why
    assert withdraw.patch == {"promotion": {"withdrawnAt": AT, "withdrawal": withdraw.why}}
    assert notice.notice.reason == "PromotionWithdrawn"
    assert planned.served.spec.tiers[0].model.uri == "pvc://models/small-by-hand"


def test_removing_spec_distillation_stops_an_unfinished_run_and_drops_the_summary():
    running = seen(listed("chat-d1", phase="Running"))
    assert not needs_job(cascade(distils=False), running.run), "stopped, not followed"
    planned = plan(cascade(distils=False), running)
    delete, fail, decision, _ = planned.actions
    assert delete == DeleteJob("chat-d1")
    assert fail == FailRun("chat-d1", NO_POLICY.format(cascade="chat"), AT), "not guarded: the run is stopped"
    assert isinstance(decision, WriteDecision) and decision.promotion.reason == PromotionReason.run_failed
    assert planned.status == {"distillation": None}


def test_a_due_run_is_created_and_old_runs_beyond_the_history_limit_go():
    failed = {"promoted": False, "reason": "RunFailed"}
    old = [
        seen(listed(f"chat-d{i}", hours_ago=10 - i, phase="Failed", promotion=failed), job("Failed")) for i in range(3)
    ]
    planned = plan(cascade(historyLimit=1), *old, logged=100)
    *deletes, create = planned.actions
    assert deletes == [DeleteRun("chat-d0"), DeleteRun("chat-d1")]
    assert isinstance(create, CreateRun) and create.run == "chat-d20261130120000"
    summary = planned.status["distillation"]
    assert (summary["runs"], summary["lastRun"], summary["waiting"]) == (2, create.run, f"run {create.run} started")


def test_nothing_to_do_plans_nothing():
    record = seen(listed("chat-d1", phase="Succeeded", model=STUDENT, gate=PASSED, promotion=PROMOTED))
    planned = plan(cascade(), record, logged=50)
    assert planned.actions == []
    assert planned.status["distillation"]["waiting"] == "50 of 100 new escalation records since the last run"


def test_a_run_whose_name_its_jobs_pods_cannot_carry_fails():
    name = "chat-" + "d" * 60
    fail, decision, _ = plan(cascade(), seen(listed(name))).actions
    assert isinstance(fail, FailRun) and "longer than 63 characters" in fail.message
    assert isinstance(decision, WriteDecision) and decision.promotion.reason == PromotionReason.run_failed


def test_a_run_whose_creation_time_is_not_a_time_is_unreadable():
    raw = listed("chat-d1")
    raw["metadata"]["creationTimestamp"] = "yesterday"
    with pytest.raises(ValidationError, match=r"metadata.creationTimestamp: not an RFC 3339 time: 'yesterday'"):
        Distillation.model_validate(raw)


def test_transient_api_errors_are_5xx_and_no_answer():
    assert ApiError(0, "Unreachable", "timed out").transient and ApiError(503, "", "").transient
    assert not ApiError(422, "Invalid", "").transient and not ApiError(409, "AlreadyExists", "").transient


@pytest.mark.slow  # starts a fresh interpreter
def test_the_plan_imports_no_io_library():
    code = "import sys, kascade.operator.run_plan\nprint(sorted(m for m in ('kopf', 'aiohttp') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- the loop that applies it -----------------------------------------------------------------


class RecordingApi:
    """The KubeApi calls the loop makes; `refuse`: (verb, name) -> the ApiError that call raises."""

    def __init__(self, refuse: dict[tuple[str, str], ApiError]) -> None:
        self.refuse, self.calls = refuse, []

    def _call(self, verb: str, name: str, **detail: Any) -> dict[str, Any]:
        self.calls.append((verb, name, detail))
        if (verb, name) in self.refuse:
            raise self.refuse[(verb, name)]
        return {}

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self._call("create", manifest["metadata"]["name"], owners=manifest["metadata"]["ownerReferences"])

    async def delete(self, api_version: str, plural: str, name: str, *, namespace: str | None) -> bool:
        self._call("delete", name, plural=plural)
        return True

    async def patch_status(
        self,
        api_version: str,
        plural: str,
        name: str,
        *,
        namespace: str | None,
        status_patch: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        return self._call("patch", name, patch=status_patch, version=resource_version)


def apply(actions: list[Any], refuse: dict[tuple[str, str], ApiError]) -> list[tuple[str, str, dict[str, Any]]]:
    from kascade.operator.distillation_loop import apply_run_actions

    api = RecordingApi(refuse)
    body = {"apiVersion": "kascade.dev/v1alpha1", "kind": "ModelCascade", "metadata": {"name": "chat", "uid": "c"}}
    asyncio.run(apply_run_actions(api, Target.of(body), actions))  # duck-typed: the calls a KubeApi would get
    return api.calls


def test_a_guarded_write_the_pod_overtook_skips_the_runs_later_actions_and_the_next_run():
    pytest.importorskip("kopf")
    older = seen(listed("chat-d0", hours_ago=5, phase="Failed", promotion={"promoted": False, "reason": "RunFailed"}))
    running = seen(listed("chat-d1", phase="Running"), job("Failed", "BackoffLimitExceeded"))
    actions = plan(cascade(historyLimit=1), older, running, logged=1000).actions
    assert [type(a) for a in actions] == [FailRun, WriteDecision, PostNotice, DeleteRun, CreateRun]
    calls = apply(actions, {("patch", "chat-d1"): ApiError(409, "Conflict", "the object has been modified")})
    assert [(verb, name) for verb, name, _ in calls] == [("patch", "chat-d1"), ("delete", "chat-d0")]
    assert calls[0][2]["version"] == "7", "written only over the status read"
    # Nothing decided on a stale read, and no new run while chat-d1 is undecided; chat-d0 was decided before.


def test_a_refused_job_fails_its_run_with_the_reason_and_an_owner_reference_is_added():
    pytest.importorskip("kopf")
    actions = plan(cascade(), seen(listed("chat-d1"))).actions
    calls = apply(actions, {("create", "chat-d1"): ApiError(422, "Invalid", "spec.template: bad")})
    (create, name, detail), (patch, _, failed) = calls
    assert (create, name) == ("create", "chat-d1") and detail["owners"][0]["uid"] == "uid-chat-d1"
    assert patch == "patch" and failed["patch"]["message"] == "its Job was refused: spec.template: bad"
    assert len(calls) == 2, "no RecordJob after the refusal"
    with pytest.raises(ApiError):
        apply(actions, {("create", "chat-d1"): ApiError(0, "Unreachable", "timed out")})
