"""The reconcile's pure helpers (no kopf): parsing, status composition, no-op detection, events, in-place edits."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kascade.api.modelcascade import ModelCascade
from kascade.operator.builders import build_children
from kascade.operator.cascade_resource import parse_cascade, validation_message
from kascade.operator.cluster_needs import referenced_secrets, wants_gpu_products
from kascade.operator.counters import apply_merge_patch
from kascade.operator.drift import mark_edited
from kascade.operator.labels import SPEC_HASH_ANNOTATION
from kascade.operator.notices import Notice, transition_notices
from kascade.operator.plan import Plan, index_children, plan_children
from kascade.operator.problems import Problem, conflict_problems
from kascade.operator.settings import OperatorSettings, SettingsError
from kascade.operator.status_patch import changes_status, compose_status, invalid_status

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = OperatorSettings()
T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:00:15Z", "2026-01-01T00:00:30Z"


def example(name: str = "chat-vllm-gpu.yaml") -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def served(manifests: list[dict[str, Any]], ready: int | None = None) -> dict:
    """The children as the API server returns them: server metadata, and Deployment status when `ready` is given."""
    objects = []
    for manifest in copy.deepcopy(manifests):
        manifest["metadata"].update(uid=f"uid-{manifest['metadata']['name']}", resourceVersion="5")
        if manifest["kind"] == "Deployment" and ready is not None:
            manifest["status"] = {"readyReplicas": min(ready, manifest["spec"]["replicas"])}
        objects.append(manifest)
    return index_children(objects)


def slot(
    process: str, pod: str, requests: int, *, started: str = T0, actual: float = 1.0, baseline: float = 3.0
) -> dict:
    return {
        "processId": process,
        "pod": pod,
        "startedAt": started,
        "updatedAt": started,
        "currency": "USD",
        "requests": requests,
        "failed": 0,
        "escalations": requests // 4,
        "answeredBy": {"small": requests - requests // 4, "large": requests // 4},
        "cost": {"actual": actual, "baseline": baseline, "saved": baseline - actual},
    }


# --- parsing -----------------------------------------------------------------------------------


def test_parse_cascade_reads_the_spec_and_ignores_the_status():
    body = example()
    body["status"] = {"whatever": {"the": "operator reads raw"}}
    cascade = parse_cascade(body)
    assert cascade.metadata.name == "chat" and cascade.metadata.namespace == "llm"
    assert [tier.name for tier in cascade.spec.tiers] == ["small", "large"]


def test_a_spec_that_does_not_parse_gives_one_readable_line():
    body = example()
    body["spec"]["tiers"][1]["accept"] = {"threshold": 0.5}
    with pytest.raises(Exception) as raised:
        parse_cascade(body)
    message = validation_message(raised.value)
    assert message.startswith("the resource does not parse: ")
    assert "the last tier ('large') always answers and takes no accept rule" in message
    assert "\n" not in message


def test_validation_messages_write_paths_as_yaml_does():
    body = example()
    body["spec"]["tiers"][0]["accept"]["threshold"] = 2
    with pytest.raises(ValidationError) as raised:
        parse_cascade(body)
    assert "spec.tiers[0].accept.threshold: " in validation_message(raised.value)


def test_invalid_status_says_invalid_spec_and_keeps_other_conditions():
    previous = {
        "conditions": [
            {
                "type": "TiersReady",
                "status": "True",
                "reason": "AllTiersReady",
                "message": "ok",
                "lastTransitionTime": T0,
            }
        ]
    }
    patch = invalid_status(previous, message="the resource does not parse: x", now=T1, generation=4)
    assert patch["observedGeneration"] == 4
    kinds = {c["type"]: (c["status"], c["reason"]) for c in patch["conditions"]}
    assert kinds == {
        "Ready": ("False", "InvalidSpec"),
        "Degraded": ("True", "InvalidSpec"),
        "TiersReady": ("True", "AllTiersReady"),
    }


# --- observing ------------------------------------------------------------------------------------


def test_referenced_secrets_are_the_ones_the_spec_names_with_their_keys():
    cascade = parse_cascade(example())
    assert referenced_secrets(cascade) == {"hf-token": {"token"}, "chat-client-keys": {"keys"}}
    assert wants_gpu_products(cascade)
    cpu_only = example()
    for tier in cpu_only["spec"]["tiers"]:
        tier["resources"] = {"gpus": 0}
    assert not wants_gpu_products(parse_cascade(cpu_only))


# --- composing the status -----------------------------------------------------------------------------


def test_the_status_of_a_ready_cascade():
    cascade = parse_cascade(example())
    observed = served(build_children(cascade, SETTINGS), ready=5)
    patch, fold = compose_status(cascade, SETTINGS, {}, observed, problems=[], live_pods=[], now=T0, generation=3)
    assert patch["observedGeneration"] == 3
    assert patch["endpoint"] == "http://chat-router.llm.svc:8000/v1"
    assert {c["type"]: c["status"] for c in patch["conditions"]} == {
        "Ready": "True",
        "TiersReady": "True",
        "RouterReady": "True",
        "Degraded": "False",
        "Calibrated": "False",  # online calibration is collecting samples
    }
    assert [(t["name"], t["readyReplicas"]) for t in patch["tiers"]] == [("small", 2), ("large", 1)]
    assert patch["summary"]["tiers"] == "2/2"
    assert fold.retired == ()


def test_composing_again_from_the_written_status_changes_nothing():
    """The no-op guarantee at its root: status = status + patch, recomposed later, gives no change to write."""
    cascade = parse_cascade(example())
    observed = served(build_children(cascade, SETTINGS), ready=5)
    slots = {"p1": slot("p1", "chat-router-a", 8), "p2": slot("p2", "chat-router-b", 4)}
    patch, _ = compose_status(
        cascade,
        SETTINGS,
        {"replicaCounters": slots},
        observed,
        problems=[],
        live_pods=["chat-router-a", "chat-router-b"],
        now=T0,
        generation=1,
    )
    written = apply_merge_patch({"replicaCounters": slots}, patch)
    again, fold = compose_status(
        cascade,
        SETTINGS,
        written,
        observed,
        problems=[],
        live_pods=["chat-router-a", "chat-router-b"],
        now=T1,
        generation=1,
    )
    assert not changes_status(written, again)
    assert not changes_status(written, fold.status_patch())
    assert written["traffic"]["requests"] == 12


def test_a_gone_router_pod_retires_its_slot_with_a_null_and_keeps_its_totals():
    cascade = parse_cascade(example())
    observed = served(build_children(cascade, SETTINGS), ready=5)
    status = {"replicaCounters": {"p1": slot("p1", "chat-router-a", 8), "p2": slot("p2", "chat-router-b", 4)}}
    patch, fold = compose_status(
        cascade, SETTINGS, status, observed, problems=[], live_pods=["chat-router-a"], now=T1, generation=1
    )
    assert fold.retired == ("p2",)
    assert patch["replicaCounters"] == {"p2": None}
    written = apply_merge_patch(status, patch)
    assert set(written["replicaCounters"]) == {"p1"}
    assert written["traffic"]["requests"] == 12 and written["retiredCounters"]["processes"] == 1


def at(seconds: int) -> str:
    minutes, second = divmod(seconds, 60)
    return f"2026-01-01T{minutes // 60:02d}:{minutes % 60:02d}:{second:02d}Z"


def test_gpu_hours_alone_are_written_once_they_are_due_not_at_every_look():
    """The example holds 2 L4s (0.80 an hour) and 4 H100s (3.00 an hour) once ready."""
    cascade = parse_cascade(example())
    observed = served(build_children(cascade, SETTINGS), ready=5)
    status = apply_merge_patch(
        {}, compose_status(cascade, SETTINGS, {}, observed, problems=[], live_pods=[], now=at(0), generation=1)[0]
    )
    assert [(t["readyGpus"], t["perGpuHour"]) for t in status["tiers"]] == [(2, 0.8), (4, 3.0)]
    assert status["cost"]["gpuHours"] == 0 and status["cost"]["gpuHoursUntil"] == at(0)
    assert status["summary"]["reserved"] == "-"

    too_soon = SETTINGS.gpu_hours_interval_seconds - 1
    patch, _ = compose_status(
        cascade, SETTINGS, status, observed, problems=[], live_pods=[], now=at(int(too_soon)), generation=1
    )
    assert not changes_status(status, patch)

    patch, _ = compose_status(
        cascade, SETTINGS, status, observed, problems=[], live_pods=[], now=at(1800), generation=1
    )
    written = apply_merge_patch(status, patch)
    assert written["cost"]["gpuHours"] == pytest.approx(6 * 0.5)
    assert written["cost"]["reservationCost"] == pytest.approx(2 * 0.5 * 0.8 + 4 * 0.5 * 3.0)  # 6.80
    assert written["cost"]["reservationBaseline"] == pytest.approx(6.0)
    assert [t["gpuHours"] for t in written["tiers"]] == pytest.approx([1.0, 2.0])
    assert written["summary"]["reserved"] == "USD 6.80 (3.0 GPU-h)"
    assert written["summary"]["netSaved"] == "USD -0.80 (-13.3%)"  # no traffic yet: the small tier's GPUs, unpaid for


def test_any_status_write_brings_the_gpu_hours_up_to_date():
    cascade = parse_cascade(example())
    observed = served(build_children(cascade, SETTINGS), ready=5)
    status = apply_merge_patch(
        {}, compose_status(cascade, SETTINGS, {}, observed, problems=[], live_pods=[], now=at(0), generation=1)[0]
    )
    status["replicaCounters"] = {"p1": slot("p1", "chat-router-a", 8)}  # a router reports: the status changes anyway
    patch, _ = compose_status(
        cascade, SETTINGS, status, observed, problems=[], live_pods=["chat-router-a"], now=at(60), generation=1
    )
    assert patch["cost"]["gpuHours"] == pytest.approx(6 / 60)
    scaled = served(build_children(cascade, SETTINGS), ready=1)  # the small tier down to 1 replica
    written = apply_merge_patch(status, patch)
    patch, _ = compose_status(
        cascade, SETTINGS, written, scaled, problems=[], live_pods=["chat-router-a"], now=at(120), generation=1
    )
    assert patch["cost"]["gpuHours"] == pytest.approx(2 * 6 / 60)  # the minute before it was seen at 6 GPUs
    assert [t["readyGpus"] for t in patch["tiers"]] == [1, 4]


def test_the_cost_is_in_the_spec_currency_before_any_router_reports():
    manifest = example()
    for tier in manifest["spec"]["tiers"]:
        tier["price"]["currency"] = "EUR"
    cascade = parse_cascade(manifest)
    observed = served(build_children(cascade, SETTINGS), ready=5)
    patch, _ = compose_status(cascade, SETTINGS, {}, observed, problems=[], live_pods=[], now=T0, generation=1)
    assert patch["cost"]["currency"] == "EUR"


def test_problems_degrade_the_cascade_with_their_reason():
    cascade = parse_cascade(example())
    observed = served(build_children(cascade, SETTINGS), ready=5)
    problems = [Problem("MissingSecret", 'Secret "hf-token" ... does not exist')]
    patch, _ = compose_status(cascade, SETTINGS, {}, observed, problems=problems, live_pods=[], now=T0, generation=2)
    degraded = next(c for c in patch["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "MissingSecret")
    assert 'Secret "hf-token"' in degraded["message"]


def test_name_conflicts_are_problems_that_say_what_to_do():
    problems = conflict_problems(Plan(conflicts=(("ConfigMap", "chat-router"),)), "llm")
    assert problems == [
        Problem(
            "NameConflict",
            'ConfigMap "chat-router" already exists in namespace "llm" and is not '
            "managed by this cascade; delete or rename it, or rename the cascade",
        )
    ]


# --- events --------------------------------------------------------------------------------------------


def condition(type_: str, status: str, reason: str = "R", message: str = "m") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def test_events_mark_transitions_not_steady_states():
    healthy = [condition("Ready", "True", message="serves"), condition("Degraded", "False")]
    broken = [condition("Ready", "False"), condition("Degraded", "True", "MissingSecret", "create it")]
    assert transition_notices([], healthy) == [Notice("Normal", "Ready", "serves")]
    assert transition_notices(healthy, healthy) == []
    assert transition_notices(healthy, broken) == [Notice("Warning", "MissingSecret", "create it")]
    assert transition_notices(broken, broken) == []
    other = [condition("Ready", "False"), condition("Degraded", "True", "NoMatchingNodes", "add nodes")]
    assert transition_notices(broken, other) == [Notice("Warning", "NoMatchingNodes", "add nodes")]
    assert transition_notices(broken, healthy) == [
        Notice("Normal", "Recovered", "no longer degraded (was: MissingSecret)"),
        Notice("Normal", "Ready", "serves"),
    ]


# --- in-place edits count as drift ------------------------------------------------------------------------


def test_an_edited_role_or_config_is_replaced_though_its_spec_hash_matches():
    cascade = parse_cascade(example())
    desired = build_children(cascade, SETTINGS)
    observed = served(desired)
    assert plan_children(desired, mark_edited(desired, observed)).empty

    observed[("Role", "chat-router")]["rules"][0]["verbs"].append("delete")
    observed[("ConfigMap", "chat-router")]["data"]["router.yaml"] += "# edited by hand\n"
    marked = mark_edited(desired, observed)
    assert SPEC_HASH_ANNOTATION not in marked[("Role", "chat-router")]["metadata"]["annotations"]
    assert SPEC_HASH_ANNOTATION in observed[("Role", "chat-router")]["metadata"]["annotations"]  # not changed in place
    plan = plan_children(desired, marked)
    assert sorted((m["kind"], m["metadata"]["name"]) for m in plan.patch) == [
        ("ConfigMap", "chat-router"),
        ("Role", "chat-router"),
    ]


def test_server_defaults_on_other_kinds_are_not_edits():
    cascade = parse_cascade(example())
    desired = build_children(cascade, SETTINGS)
    observed = served(desired)
    observed[("Deployment", "chat-small")]["spec"]["strategy"] = {"type": "RollingUpdate"}
    observed[("Service", "chat-small")]["spec"]["clusterIP"] = "10.96.0.10"
    assert plan_children(desired, mark_edited(desired, observed)).empty


# --- settings ----------------------------------------------------------------------------------------------


def test_the_gpu_hours_interval_comes_from_the_environment():
    assert OperatorSettings.from_env({}).gpu_hours_interval_seconds == 300.0
    assert OperatorSettings.from_env({"KASCADE_GPU_HOURS_INTERVAL_SECONDS": "60"}).gpu_hours_interval_seconds == 60.0
    with pytest.raises(SettingsError, match="KASCADE_GPU_HOURS_INTERVAL_SECONDS"):
        OperatorSettings.from_env({"KASCADE_GPU_HOURS_INTERVAL_SECONDS": "0"})


def reconcile_interval(environ: dict[str, str]) -> float:
    return OperatorSettings.from_env(environ).reconcile_interval_seconds


def test_the_reconcile_interval_comes_from_the_environment():
    assert reconcile_interval({}) == 15.0
    assert reconcile_interval({"KASCADE_RECONCILE_INTERVAL_SECONDS": "  "}) == 15.0  # blank: the default
    assert reconcile_interval({"KASCADE_RECONCILE_INTERVAL_SECONDS": "2.5"}) == 2.5
    with pytest.raises(SettingsError, match="must be a number of seconds"):
        reconcile_interval({"KASCADE_RECONCILE_INTERVAL_SECONDS": "soon"})
    with pytest.raises(SettingsError, match=r"\(0, 3600\]"):
        reconcile_interval({"KASCADE_RECONCILE_INTERVAL_SECONDS": "0"})


def test_modelcascade_parsing_matches_the_api_types():
    body = example()
    assert parse_cascade(body).spec == ModelCascade.model_validate(body).spec


# --- online calibration ----------------------------------------------------------------------


def _agreement_slot(process: str, pod: str, samples: dict[str, int], agreed: dict[str, int]) -> dict:
    return {**slot(process, pod, sum(samples.values())), "calibrationSamples": samples, "calibrationAgreed": agreed}


def test_folded_agreement_counts_move_the_threshold_and_turn_calibrated_true():
    cascade = parse_cascade(example())  # minAgreement 0.95 online, small declared at 0.8 (geometricMean)
    observed = served(build_children(cascade, SETTINGS), ready=5)
    patch, _ = compose_status(cascade, SETTINGS, {}, observed, problems=[], live_pods=[], now=T0, generation=1)
    calibrated = next(c for c in patch["conditions"] if c["type"] == "Calibrated")
    assert (calibrated["status"], calibrated["reason"]) == ("False", "CollectingSamples")
    declared = patch["tiers"][0]["threshold"]
    # Two routers measured 1,000 pairs between them: the small tier always agrees from 0.5 up, never below
    # (so the threshold, declared at 0.35, goes up to 0.5 at once: safer moves do not wait).
    high = {"small@0.5": 300, "small@0.9": 300}
    low = {"small@0.2": 200, "small@0.45": 200}
    slots = {
        "p1": _agreement_slot("p1", "chat-router-a", high, high),
        "p2": _agreement_slot("p2", "chat-router-b", low, {}),
    }
    status = apply_merge_patch({"replicaCounters": slots}, patch)
    patch, _ = compose_status(
        cascade,
        SETTINGS,
        status,
        observed,
        problems=[],
        live_pods=["chat-router-a", "chat-router-b"],
        now=T1,
        generation=1,
    )
    calibrated = next(c for c in patch["conditions"] if c["type"] == "Calibrated")
    assert calibrated["status"] == "True" and calibrated["reason"] == "GoalMet"
    (tier,) = patch["calibration"]["tiers"]
    assert tier["threshold"] == 0.5 and tier["declared"] == declared and tier["samples"] == 1000
    assert tier["lastMoved"] == T1 and patch["tiers"][0]["threshold"] == 0.5  # what the routers read
    assert tier["agreement"] == 1.0 and tier["escalationRate"] == 0.4
    written = apply_merge_patch(status, patch)
    again, _ = compose_status(
        cascade,
        SETTINGS,
        written,
        observed,
        problems=[],
        live_pods=["chat-router-a", "chat-router-b"],
        now=T2,
        generation=1,
    )
    assert not changes_status(written, again)  # nothing new measured: nothing to write


def test_pinned_thresholds_have_no_calibration_status():
    body = example()
    body["spec"]["calibration"]["shadowSampleRate"] = 0
    cascade = parse_cascade(body)
    observed = served(build_children(cascade, SETTINGS), ready=5)
    status = {
        "calibration": {"goal": "minAgreement=0.95", "tiers": []},
        "conditions": [{"type": "Calibrated", "status": "True", "reason": "GoalMet"}],
    }
    patch, _ = compose_status(cascade, SETTINGS, status, observed, problems=[], live_pods=[], now=T0, generation=2)
    assert patch["calibration"] is None and "Calibrated" not in {c["type"] for c in patch["conditions"]}


def test_shadow_samples_correct_the_savings_baseline_with_the_large_tiers_own_token_counts():
    cascade = parse_cascade(example())  # the large tier: $0.88 per million tokens in and out
    observed = served(build_children(cascade, SETTINGS), ready=5)
    tokens = {
        "acceptedInput": 1_000_000,
        "acceptedOutput": 1_000_000,
        "shadowAnsweredInput": 10_000,
        "shadowAnsweredOutput": 10_000,
        "shadowLastInput": 10_000,
        "shadowLastOutput": 15_000,
    }
    status = {
        "replicaCounters": {"p1": {**slot("p1", "chat-router-a", 100), "shadowCalls": 30, "baselineTokens": tokens}}
    }
    patch, _ = compose_status(
        cascade, SETTINGS, status, observed, problems=[], live_pods=["chat-router-a"], now=T0, generation=1
    )
    cost = patch["cost"]
    assert cost["lastTierOutputRatio"] == 1.5
    assert cost["estimatedBaseline"] == pytest.approx(3.0 + 0.5 * 0.88)  # half again of a million output tokens
    assert cost["estimatedSaved"] == pytest.approx(cost["estimatedBaseline"] - cost["actual"])
    assert cost["baseline"] == 3.0  # the counter itself is untouched: it only ever grows
