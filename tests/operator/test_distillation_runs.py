"""Distillation runs, pure parts: when a run starts, which runs go, the run and its Job, the promotion decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
import pytest
from kascade.api.distillation import Distillation
from kascade.api.modelcascade import ModelCascade
from kascade.operator.build_distillation import (
    CLAIMS_ROOT,
    build_distillation,
    build_distillation_job,
    build_distiller_children,
    distiller_name,
)
from kascade.operator.builders import build_children
from kascade.operator.distillation_loop import summarize_runs
from kascade.operator.distillation_schedule import plan_runs, run_name
from kascade.api.distillation import PromotionReason
from kascade.operator.promotion import decide_promotion, spec_patch

PROMOTED, GATE_FAILED = PromotionReason.promoted, PromotionReason.gate_failed
RUN_FAILED, STUDENT_CHANGED = PromotionReason.run_failed, PromotionReason.student_changed
from kascade.operator.settings import OperatorSettings

SETTINGS = OperatorSettings()
NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
SMALL = "pvc://models/small-v1"


def cascade(**policy: Any) -> ModelCascade:
    return ModelCascade.model_validate({
        "apiVersion": "kascade.dev/v1alpha1", "kind": "ModelCascade",
        "metadata": {"name": "chat", "namespace": "llm", "creationTimestamp": "2026-11-30T00:00:00Z"},
        "spec": {
            "tiers": [
                {"name": "small", "model": {"uri": SMALL}, "accept": {"method": "geometricMean", "threshold": 0.5}},
                {"name": "large", "model": {"uri": "hf://org/large"}, "resources": {"gpus": 1}},
            ],
            "escalationLog": {"enabled": True, "uri": "pvc://escalations/chat", "credentialsSecret": "s3-keys"},
            "distillation": {"outputUri": "pvc://students/chat", "minSamples": 100, **policy},
        },
    })  # fmt: skip


def run(name: str, *, created: datetime, phase: str | None = None, log_records: int = 0, **status: Any) -> Distillation:
    manifest = build_distillation(cascade(), SETTINGS, name=name, log_records=log_records)
    manifest["metadata"]["creationTimestamp"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    if phase is not None:
        manifest["status"] = {"phase": phase, **status}
    return Distillation.model_validate(manifest)


# --- when a run starts ----------------------------------------------------------------------


def plan(runs: list[Distillation], *, logged: int, now: datetime = NOW, **policy: Any) -> Any:
    spec = cascade(**policy).spec.distillation
    assert spec is not None
    return plan_runs(spec, runs, cascade="chat", cascade_created=datetime(2026, 11, 30, tzinfo=UTC), logged=logged, now=now)


def test_a_run_starts_once_enough_escalations_were_logged():
    waiting = plan([], logged=99)
    assert waiting.start is None and waiting.waiting == "99 of 100 new escalation records since the last run"
    assert plan([], logged=100).start == run_name("chat", NOW)


def test_records_count_from_the_last_run():
    last = run("chat-d1", created=NOW - timedelta(hours=1), phase="Succeeded", log_records=500,
               promotion={"promoted": False, "reason": "GateFailed"})  # fmt: skip
    assert plan([last], logged=599).start is None
    assert plan([last], logged=600).start is not None


def test_one_run_at_a_time():
    running = run("chat-d1", created=NOW - timedelta(hours=1), phase="Running")
    decided = plan([running], logged=10_000)
    assert decided.start is None and decided.waiting == "run chat-d1 is Running"
    assert plan([run("chat-d1", created=NOW, phase=None)], logged=10_000).start is None, "a new run is Pending"
    # The pod reported Failed, its Job may still retry it: not decided, so neither replaced nor deleted.
    retrying = run("chat-d1", created=NOW - timedelta(hours=1), phase="Failed", log_records=100)
    waiting = plan([retrying], logged=10_000, historyLimit=1)
    assert waiting.start is None and waiting.delete == [] and waiting.waiting == "run chat-d1 is Failed"


def test_a_schedule_starts_a_run_once_per_tick():
    # Daily at 03:00: the cascade was created at midnight, so the first tick is today's.
    assert plan([], logged=1000, schedule="0 3 * * *", now=datetime(2026, 11, 30, 2, 59, tzinfo=UTC)).start is None
    first = plan([], logged=1000, schedule="0 3 * * *", now=datetime(2026, 11, 30, 3, 0, 5, tzinfo=UTC))
    assert first.start is not None
    done = run(first.start, created=datetime(2026, 11, 30, 3, 0, 5, tzinfo=UTC), phase="Succeeded", log_records=0,
               promotion={"promoted": True, "reason": "Promoted"})  # fmt: skip
    later = plan([done], logged=5000, schedule="0 3 * * *", now=datetime(2026, 11, 30, 20, tzinfo=UTC))
    assert later.start is None and later.waiting == "next look at 2026-12-01T03:00:00Z (0 3 * * *)"
    assert plan([done], logged=5000, schedule="0 3 * * *", now=datetime(2026, 12, 1, 3, 1, tzinfo=UTC)).start


def test_finished_runs_beyond_the_history_limit_go_oldest_first():
    failed = {"promoted": False, "reason": "RunFailed"}
    runs = [run(f"chat-d{i}", created=NOW - timedelta(hours=10 - i), phase="Failed", promotion=failed) for i in range(5)]
    runs.append(run("chat-d9", created=NOW, phase="Running"))
    assert plan(runs, logged=0, historyLimit=2).delete == ["chat-d0", "chat-d1", "chat-d2"]
    runs[0] = run("chat-d0", created=NOW - timedelta(hours=10), phase="Succeeded",
                  promotion={"promoted": True, "reason": "Promoted", "previousModel": SMALL})  # fmt: skip
    assert plan(runs, logged=0, historyLimit=2).delete == ["chat-d1", "chat-d2"], "the rollback target's run stays"


def test_a_schedule_that_is_not_cron_is_refused():
    with pytest.raises(ValueError, match="should match pattern"):
        cascade(schedule="every night")
    with pytest.raises(ValueError, match="should match pattern"):
        cascade(schedule="0 0 3 * * *")  # six fields (seconds): not a CronJob's
    with pytest.raises(ValueError, match="is not a cron expression"):
        cascade(schedule="99 3 * * *")
    assert cascade(schedule="@daily").spec.distillation is not None


# --- the run and its Job --------------------------------------------------------------------


def test_the_run_starts_from_the_serving_student_and_writes_a_folder_of_its_own():
    made = build_distillation(cascade(training={"temperature": 4.0}), SETTINGS, name="chat-d1", log_records=1234)
    spec = made["spec"]
    assert (spec["cascade"], spec["tier"], spec["student"]) == ("chat", "small", SMALL)
    assert spec["data"] == "pvc://escalations/chat" and spec["output"] == "pvc://students/chat/chat-d1"
    assert spec["training"]["temperature"] == 4.0 and spec["logRecords"] == 1234
    assert "teacherUrl" not in spec, "off-policy runs need no teacher server"
    on_policy = build_distillation(cascade(training={"onPolicyFraction": 0.5}), SETTINGS, name="chat-d2", log_records=0)["spec"]
    assert on_policy["teacherUrl"] == "http://chat-large.llm.svc:8000/v1" and on_policy["teacherModel"] == "large"


def test_the_job_runs_kascade_distill_on_a_gpu_with_the_claims_mounted_and_reports_to_its_run():
    job = build_distillation_job(run("chat-d1", created=NOW), SETTINGS)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert args[0] == "distill" and container["image"] == SETTINGS.runtime_gpu_image
    assert args[args.index("--student") + 1] == f"{CLAIMS_ROOT}/models/small-v1"
    assert args[args.index("--data") + 1] == f"{CLAIMS_ROOT}/escalations/chat"
    assert args[args.index("--out") + 1] == f"{CLAIMS_ROOT}/students/chat/chat-d1"
    assert args[args.index("--report-to") + 1] == "llm/chat-d1"
    assert args[args.index("--model-uri") + 1] == "pvc://students/chat/chat-d1"
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"] for v in pod["volumes"]}
    assert claims == {"models": True, "escalations": True, "students": False}, "only the output is writable"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert container["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
    assert pod["serviceAccountName"] == distiller_name("chat") and pod["restartPolicy"] == "Never"
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    # A refusal (bad data, a status it cannot write) fails the Job at once; anything else is retried, resumed.
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    kubernetes_validate.validate(job, "1.30", strict=True)


def test_the_policys_tolerations_reach_the_runs_pod_whole():
    toleration = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                  "tolerationSeconds": 60}  # fmt: skip
    made = build_distillation(cascade(tolerations=[toleration]), SETTINGS, name="chat-d1", log_records=0)
    assert made["spec"]["tolerations"] == [toleration]
    job = build_distillation_job(Distillation.model_validate(made), SETTINGS)
    assert toleration in job["spec"]["template"]["spec"]["tolerations"]
    kubernetes_validate.validate(job, "1.30", strict=True)


def test_the_runs_identity_may_only_write_distillation_status():
    account, role, binding = build_distiller_children(cascade())
    assert role["rules"] == [{"apiGroups": ["kascade.dev"], "resources": ["distillations/status"],
                              "verbs": ["get", "patch"]}]  # fmt: skip
    assert binding["subjects"][0]["name"] == account["metadata"]["name"] == "chat-distill"
    names = {(c["kind"], c["metadata"]["name"]) for c in build_children(cascade(), SETTINGS)}
    assert ("ServiceAccount", "chat-distill") in names
    without = cascade().model_copy(update={"spec": cascade().spec.model_copy(update={"distillation": None})})
    assert build_distiller_children(without) == []


# --- promotion ------------------------------------------------------------------------------


def finished(gate: dict[str, Any] | None, *, phase: str = "Succeeded", **status: Any) -> Distillation:
    extra = {"gate": gate} if gate is not None else {}
    return run("chat-d1", created=NOW, phase=phase, model="pvc://students/chat/chat-d1", **extra, **status)


def test_a_passed_gate_promotes_and_keeps_the_serving_model_as_rollback_target():
    passed = finished({"passed": True, "gain": 0.05})
    decision = decide_promotion(passed, cascade(), now="t")
    assert decision is not None and decision.promoted and decision.reason == PROMOTED
    assert decision.previous_model == SMALL
    assert spec_patch(passed, cascade()) == [
        {"op": "test", "path": "/spec/tiers/0/model/uri", "value": SMALL},
        {"op": "replace", "path": "/spec/tiers/0/model/uri", "value": "pvc://students/chat/chat-d1"},
    ]


def test_a_failed_gate_or_run_never_promotes_and_says_why():
    gate = decide_promotion(finished({"passed": False, "gain": 0.0, "reasons": ["agreement +0.0000 < +0.01"]}),
                            cascade(), now="t")  # fmt: skip
    assert gate is not None and not gate.promoted and gate.reason == GATE_FAILED and "+0.0000 < +0.01" in gate.message
    failed = decide_promotion(finished(None, phase="Failed", message="out of memory"), cascade(), now="t")
    assert failed is not None and failed.reason == RUN_FAILED and failed.message == "out of memory"
    assert decide_promotion(run("chat-d1", created=NOW, phase="Running"), cascade(), now="t") is None


def test_a_student_changed_meanwhile_is_not_replaced():
    moved = cascade()
    moved.spec.tiers[0].model.uri = "pvc://models/small-by-hand"
    decision = decide_promotion(finished({"passed": True, "gain": 0.05}), moved, now="t")
    assert decision is not None and decision.reason == STUDENT_CHANGED and "small-by-hand" in decision.message


def test_a_failed_gate_never_promotes_even_when_the_tier_already_serves_its_model():
    served = cascade()
    served.spec.tiers[0].model.uri = "pvc://students/chat/chat-d1"
    decision = decide_promotion(finished({"passed": False, "gain": 0.0, "reasons": ["no gain"]}), served, now="t")
    assert decision is not None and not decision.promoted and decision.reason == GATE_FAILED


def test_a_promotion_the_operator_made_before_stopping_is_recognised():
    served = cascade()
    served.spec.tiers[0].model.uri = "pvc://students/chat/chat-d1"  # patched, then the operator stopped
    decision = decide_promotion(finished({"passed": True, "gain": 0.05}), served, now="t")
    assert decision is not None and decision.promoted and decision.previous_model == SMALL
    assert spec_patch(finished({"passed": True}), served) is None, "nothing left to patch"


def test_a_run_never_writes_over_the_model_it_starts_from():
    manifest = build_distillation(cascade(), SETTINGS, name="chat-d1", log_records=0)
    manifest["spec"]["output"] = manifest["spec"]["student"] = "pvc://students/chat/v1"
    with pytest.raises(ValueError, match="spec.output must differ from spec.student"):
        Distillation.model_validate(manifest)


def test_a_decision_is_made_once():
    decided = finished({"passed": True, "gain": 0.05}, promotion={"promoted": True, "reason": PROMOTED})
    assert decide_promotion(decided, cascade(), now="t") is None


def test_the_status_names_the_rollback_target_and_what_the_next_run_waits_for():
    promoted = finished({"passed": True}, promotion={"promoted": True, "reason": PROMOTED, "previousModel": SMALL})
    summary = summarize_runs(cascade(), [promoted], "3 of 100 new escalation records since the last run")
    assert summary.rollback_target == SMALL and summary.last_promoted == "chat-d1" and summary.serving == SMALL
    assert summary.waiting.startswith("3 of 100")
