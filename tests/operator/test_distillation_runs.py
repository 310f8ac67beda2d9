"""Distillation runs, pure parts: when a run starts, which runs go, the run and its Job, the promotion decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
import pytest

from kascade.api.distill_settings import DistillSettings
from kascade.api.distillation import Distillation, PromotionReason
from kascade.api.modelcascade import ModelCascade
from kascade.operator.build_distillation import (
    CLAIMS_ROOT,
    build_distillation,
    build_distillation_job,
    build_distiller_children,
    distiller_name,
)
from kascade.operator.builders import build_children
from kascade.operator.distillation_schedule import plan_runs, run_name
from kascade.operator.promotion import Serving, decide_promotion, served_cascade, serving, withdrawals
from kascade.operator.run_plan import summarize_runs

PROMOTED, GATE_FAILED = PromotionReason.promoted, PromotionReason.gate_failed
RUN_FAILED, STUDENT_CHANGED = PromotionReason.run_failed, PromotionReason.student_changed
from kascade.operator.settings import OperatorSettings

SETTINGS = OperatorSettings()
NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
SMALL = "pvc://models/small-v1"


def cascade(**policy: Any) -> ModelCascade:
    return ModelCascade.model_validate(
        {
            "apiVersion": "kascade.dev/v1alpha1",
            "kind": "ModelCascade",
            "metadata": {"name": "chat", "namespace": "llm", "creationTimestamp": "2026-11-30T00:00:00Z"},
            "spec": {
                "tiers": [
                    {"name": "small", "model": {"uri": SMALL}, "accept": {"method": "geometricMean", "threshold": 0.5}},
                    {"name": "large", "model": {"uri": "hf://org/large"}, "resources": {"gpus": 1}},
                ],
                "escalationLog": {"enabled": True, "uri": "pvc://escalations/chat", "credentialsSecret": "s3-keys"},
                "distillation": {"outputUri": "pvc://students/chat", "minSamples": 100, **policy},
            },
        }
    )


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
    return plan_runs(
        spec, runs, cascade="chat", cascade_created=datetime(2026, 11, 30, tzinfo=UTC), logged=logged, now=now
    )


def test_a_run_starts_once_enough_escalations_were_logged():
    waiting = plan([], logged=99)
    assert waiting.start is None and waiting.waiting == "99 of 100 new escalation records since the last run"
    assert plan([], logged=100).start == run_name("chat", NOW)


def test_records_count_from_the_last_run():
    last = run(
        "chat-d1",
        created=NOW - timedelta(hours=1),
        phase="Succeeded",
        log_records=500,
        promotion={"promoted": False, "reason": "GateFailed"},
    )
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
    done = run(
        first.start,
        created=datetime(2026, 11, 30, 3, 0, 5, tzinfo=UTC),
        phase="Succeeded",
        log_records=0,
        promotion={"promoted": True, "reason": "Promoted"},
    )
    later = plan([done], logged=5000, schedule="0 3 * * *", now=datetime(2026, 11, 30, 20, tzinfo=UTC))
    assert later.start is None and later.waiting == "next look at 2026-12-01T03:00:00Z (0 3 * * *)"
    assert plan([done], logged=5000, schedule="0 3 * * *", now=datetime(2026, 12, 1, 3, 1, tzinfo=UTC)).start


def test_finished_runs_beyond_the_history_limit_go_oldest_first():
    failed = {"promoted": False, "reason": "RunFailed"}
    runs = [
        run(f"chat-d{i}", created=NOW - timedelta(hours=10 - i), phase="Failed", promotion=failed) for i in range(5)
    ]
    runs.append(run("chat-d9", created=NOW, phase="Running"))
    assert plan(runs, logged=0, historyLimit=2).delete == ["chat-d0", "chat-d1", "chat-d2"]
    runs[0] = run(
        "chat-d0",
        created=NOW - timedelta(hours=10),
        phase="Succeeded",
        promotion={"promoted": True, "reason": "Promoted", "previousModel": SMALL},
    )
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
    on_policy = build_distillation(
        cascade(training={"onPolicyFraction": 0.5}), SETTINGS, name="chat-d2", log_records=0
    )["spec"]
    assert on_policy["teacherUrl"] == "http://chat-large.llm.svc:8000/v1" and on_policy["teacherModel"] == "large"


def test_the_job_runs_kascade_distill_on_a_gpu_with_the_claims_mounted_and_reports_to_its_run():
    job = build_distillation_job(run("chat-d1", created=NOW), SETTINGS)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert args[0] == "distill" and container["image"] == SETTINGS.runtime_gpu_image
    # The run's settings travel whole, as one argument the pod validates with the same model.
    settings = DistillSettings.model_validate_json(args[args.index("--settings") + 1])
    assert settings.student == f"{CLAIMS_ROOT}/models/small-v1"
    assert settings.data == f"{CLAIMS_ROOT}/escalations/chat"
    assert str(settings.out) == f"{CLAIMS_ROOT}/students/chat/chat-d1"
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


def test_every_setting_of_the_policy_reaches_the_runs_pod():
    training = {"heldOut": 0.2, "maxLength": 256, "loraRank": 8, "evalEvery": 10, "evalGenerate": 5}
    training |= {"maxNewTokens": 16, "teacherTopK": 10, "warmupSteps": 0, "temperature": 4.0, "loss": "reverseKL"}
    gate = {"minAgreementGain": 0.05, "sliceTolerance": 0.1, "minSliceExamples": 5}
    made = build_distillation(cascade(training=training, gate=gate), SETTINGS, name="chat-d1", log_records=0)
    run = Distillation.model_validate(made)
    spec, job = run.spec, build_distillation_job(run, SETTINGS)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    settings = DistillSettings.model_validate_json(args[args.index("--settings") + 1])
    assert settings.training == spec.training and settings.gate == spec.gate and settings.matcher == spec.matcher
    assert settings.training.model_dump(by_alias=True, include={"held_out", "max_length"}) == {
        "heldOut": 0.2,
        "maxLength": 256,
    }


def test_the_policys_tolerations_reach_the_runs_pod_whole():
    toleration = {
        "key": "node.kubernetes.io/unreachable",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 60,
    }
    made = build_distillation(cascade(tolerations=[toleration]), SETTINGS, name="chat-d1", log_records=0)
    assert made["spec"]["tolerations"] == [toleration]
    job = build_distillation_job(Distillation.model_validate(made), SETTINGS)
    assert toleration in job["spec"]["template"]["spec"]["tolerations"]
    kubernetes_validate.validate(job, "1.30", strict=True)


def test_the_runs_identity_may_only_write_distillation_status():
    account, role, binding = build_distiller_children(cascade())
    assert role["rules"] == [
        {"apiGroups": ["kascade.dev"], "resources": ["distillations/status"], "verbs": ["get", "patch"]}
    ]
    assert binding["subjects"][0]["name"] == account["metadata"]["name"] == "chat-distill"
    names = {(c["kind"], c["metadata"]["name"]) for c in build_children(cascade(), SETTINGS)}
    assert ("ServiceAccount", "chat-distill") in names
    without = cascade().model_copy(update={"spec": cascade().spec.model_copy(update={"distillation": None})})
    assert build_distiller_children(without) == []


# --- promotion ------------------------------------------------------------------------------

STUDENT = "pvc://students/chat/chat-d1"


def finished(
    gate: dict[str, Any] | None, *, phase: str = "Succeeded", name: str = "chat-d1", **status: Any
) -> Distillation:
    extra = {"gate": gate} if gate is not None else {}
    return run(name, created=NOW, phase=phase, model=f"pvc://students/chat/{name}", **extra, **status)


def decide(run_: Distillation, cascade_: ModelCascade, runs: list[Distillation] | None = None) -> Any:
    return decide_promotion(run_, cascade_, serving(cascade_, runs or []), now="t")


def promoted_run(name: str, *, student: str, replaces: str = SMALL, hours: int = 0, **promotion: Any) -> Distillation:
    made = run(
        name,
        created=NOW + timedelta(hours=hours),
        phase="Succeeded",
        model=f"pvc://students/chat/{name}",
        gate={"passed": True, "gain": 0.05},
        promotion={
            "promoted": True,
            "reason": PROMOTED,
            "previousModel": student,
            "replaces": replaces,
            "at": "t",
            **promotion,
        },
    )
    made.spec.student = student
    return made


def served_uri(cascade_: ModelCascade, runs: list[Distillation]) -> str:
    return served_cascade(cascade_, serving(cascade_, runs)).spec.tiers[0].model.uri


def with_tier_uri(uri: str, **policy: Any) -> ModelCascade:
    edited = cascade(**policy)
    edited.spec.tiers[0].model.uri = uri
    return edited


def test_a_passed_gate_promotes_over_the_spec_model_and_keeps_the_serving_model_as_rollback_target():
    passed = finished({"passed": True, "gain": 0.05})
    decision = decide(passed, cascade())
    assert decision is not None and decision.promoted and decision.reason == PROMOTED
    assert decision.previous_model == SMALL and decision.replaces == SMALL


def test_a_promotion_is_served_without_the_spec_changing():
    spec = cascade()
    record = promoted_run("chat-d1", student=SMALL)
    served = served_cascade(spec, serving(spec, [record]))
    assert served.spec.tiers[0].model.uri == STUDENT, "the builders build the promoted model"
    assert spec.spec.tiers[0].model.uri == SMALL, "the spec is the user's, untouched"
    deployment = next(
        c
        for c in build_children(served, SETTINGS)
        if c["kind"] == "Deployment" and c["metadata"]["name"] == "chat-small"
    )
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert "students" in claims
    assert served.spec.tiers[1] == spec.spec.tiers[1]


def test_a_promotion_over_a_promotion_chains_and_the_next_run_starts_from_the_served_model():
    first = promoted_run("chat-d1", student=SMALL)
    served = served_cascade(cascade(), serving(cascade(), [first]))
    assert build_distillation(served, SETTINGS, name="chat-d2", log_records=0)["spec"]["student"] == STUDENT
    second = finished({"passed": True, "gain": 0.02}, name="chat-d2")
    second.spec.student = STUDENT
    decision = decide(second, cascade(), [first])
    assert decision is not None and decision.promoted
    assert decision.previous_model == STUDENT and decision.replaces == SMALL, "one step back; over the spec's model"
    second = promoted_run("chat-d2", student=STUDENT, hours=1)
    assert served_uri(cascade(), [first, second]) == "pvc://students/chat/chat-d2"
    assert served_uri(cascade(), [second]) == "pvc://students/chat/chat-d2", "the older record may be pruned"


def test_editing_model_uri_pins_it_and_withdraws_the_promotion_for_good():
    record = promoted_run("chat-d1", student=SMALL)
    pinned = with_tier_uri("pvc://models/small-by-hand")
    assert served_uri(pinned, [record]) == "pvc://models/small-by-hand"
    assert serving(pinned, [record]).message == (
        "tier small's model.uri changed from pvc://models/small-v1 to pvc://models/small-by-hand: "
        "it serves pvc://models/small-by-hand (a pin)"
    )
    [(run_, why)] = withdrawals(pinned, [record])
    assert run_.metadata.name == "chat-d1" and "(a pin)" in why
    withdrawn = promoted_run("chat-d1", student=SMALL, withdrawnAt="t2", withdrawal=why)
    assert served_uri(cascade(), [withdrawn]) == SMALL, "setting model.uri back does not bring it back"
    assert "was withdrawn at t2" in serving(cascade(), [withdrawn]).message
    assert withdrawals(cascade(), [withdrawn]) == []


def test_manual_promotion_is_the_rollback_to_model_uri():
    record = promoted_run("chat-d1", student=SMALL)
    manual = cascade(promotion="Manual")
    assert served_uri(manual, [record]) == SMALL
    [(_, why)] = withdrawals(manual, [record])
    assert why == f"spec.distillation.promotion is Manual: tier small serves its model.uri {SMALL}"
    candidate = decide(finished({"passed": True, "gain": 0.05}), manual)
    assert candidate is not None and not candidate.promoted and candidate.reason == PromotionReason.manual
    assert f"set tier small's model.uri to {STUDENT}" in candidate.message


def test_removing_spec_distillation_serves_model_uri():
    without = cascade().model_copy(update={"spec": cascade().spec.model_copy(update={"distillation": None})})
    record = promoted_run("chat-d1", student=SMALL)
    assert served_uri(without, [record]) == SMALL
    assert [why for _, why in withdrawals(without, [record])] == [
        "spec.distillation was removed: tier small serves its model.uri"
    ]


def test_a_failed_gate_or_run_never_promotes_and_says_why():
    gate = decide(finished({"passed": False, "gain": 0.0, "reasons": ["agreement +0.0000 < +0.01"]}), cascade())
    assert gate is not None and not gate.promoted and gate.reason == GATE_FAILED and "+0.0000 < +0.01" in gate.message
    failed = decide(finished(None, phase="Failed", message="out of memory"), cascade())
    assert failed is not None and failed.reason == RUN_FAILED and failed.message == "out of memory"
    assert decide(run("chat-d1", created=NOW, phase="Running"), cascade()) is None


def test_a_student_changed_meanwhile_is_not_replaced():
    decision = decide(finished({"passed": True, "gain": 0.05}), with_tier_uri("pvc://models/small-by-hand"))
    assert decision is not None and decision.reason == STUDENT_CHANGED and "small-by-hand" in decision.message
    # A run judged against the spec's model while a promotion was served is not promoted over the promotion.
    other = promoted_run("chat-d0", student=SMALL, hours=-1)
    decision = decide(finished({"passed": True, "gain": 0.05}), cascade(), [other])
    assert decision is not None and decision.reason == STUDENT_CHANGED and "chat-d0" in decision.message


def test_a_failed_gate_never_promotes_even_when_the_tier_already_serves_its_model():
    decision = decide(finished({"passed": False, "gain": 0.0, "reasons": ["no gain"]}), with_tier_uri(STUDENT))
    assert decision is not None and not decision.promoted and decision.reason == GATE_FAILED


def test_a_run_whose_model_the_user_serves_already_is_not_promoted_over_it():
    # Was: "a promotion the operator made before stopping is recognised" (the spec was patched first, the run
    # decided second). A decision is now one write, so the tier serving the run's model means a user pinned it.
    decision = decide(finished({"passed": True, "gain": 0.05}), with_tier_uri(STUDENT))
    assert decision is not None and not decision.promoted and decision.reason == STUDENT_CHANGED


def test_a_promotion_the_cascade_would_refuse_is_not_served():
    decision = decide_promotion(
        finished({"passed": True, "gain": 0.05}), cascade(), Serving("small", SMALL, SMALL, None, ""), now="t"
    )
    assert decision is not None and decision.promoted
    refused = finished({"passed": True, "gain": 0.05})
    assert refused.status is not None
    refused.status.model = "s3://bucket/student"  # not a model a run's student tier may serve
    decision = decide(refused, cascade())
    assert decision is not None and decision.reason == PromotionReason.spec_refused and "s3://" in decision.message


def test_a_run_never_writes_over_the_model_it_starts_from():
    manifest = build_distillation(cascade(), SETTINGS, name="chat-d1", log_records=0)
    manifest["spec"]["output"] = manifest["spec"]["student"] = "pvc://students/chat/v1"
    with pytest.raises(ValueError, match="spec.output must differ from spec.student"):
        Distillation.model_validate(manifest)


def test_a_decision_is_made_once():
    decided = finished({"passed": True, "gain": 0.05}, promotion={"promoted": True, "reason": PROMOTED})
    assert decide(decided, cascade()) is None


def test_the_status_names_what_is_served_the_rollback_target_and_what_the_next_run_waits_for():
    promoted = promoted_run("chat-d1", student=SMALL)
    summary = summarize_runs(cascade(), [promoted], "3 of 100 new escalation records since the last run")
    assert summary.rollback_target == SMALL and summary.last_promoted == "chat-d1"
    assert summary.serving == STUDENT and summary.spec_model == SMALL
    assert summary.promoted is not None and (summary.promoted.run, summary.promoted.replaces) == ("chat-d1", SMALL)
    assert summary.waiting.startswith("3 of 100")
    pinned = summarize_runs(with_tier_uri("pvc://models/small-by-hand"), [promoted], "")
    assert pinned.serving == "pvc://models/small-by-hand" and pinned.promoted is None and "(a pin)" in pinned.message
