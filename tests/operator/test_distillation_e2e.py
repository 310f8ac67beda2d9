"""End to end: distillation in the cluster, driven as a user would, with the real operator, kubectl and `kascade distill`.

The stand-in API server has no kubelet: where a Job's pod would run, the test
runs the pod's own command line (`kascade distill …` from the Job the operator
made) as a real process, with the claims it mounts mapped to folders here and
its status reports aimed at the stand-in; then it sets the Job's status as the
Job controller would. In order:

1. a classify cascade with the escalation log and `spec.distillation` waits
   for records (`status.distillation.waiting`);
2. a router slot reports 40 logged escalations: a Distillation and its Job
   appear; the run trains on the log, passes the gate and is promoted: the
   tier's Deployment serves the new student while the spec keeps the user's
   `model.uri` (the operator never writes it), and the model it replaced is
   the rollback target;
3. the user's unchanged manifest re-applied (client-side and server-side)
   neither undoes the promotion nor restarts the tier;
4. the next run starts from the promoted student and has nothing left to
   learn: the gate fails, the Deployment is untouched and the run says why;
5. a rollback is one field of the manifest: `spec.distillation.promotion:
   Manual` serves `model.uri` again, and setting Automatic back does not
   bring the withdrawn promotion back;
6. a run whose Job fails is Failed with the Job's reason, never promoted; a run
   the pod reported Failed is decided only once its Job stops retrying;
7. every call the operator made is in its RBAC rules, none wrote the cascade's
   spec; every call the run made is in the Role the operator gave it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kopf")
pytest.importorskip("kmock")
pytest.importorskip("torch")

from kascade.api.counters import CounterSlot
from kascade.api.escalation_record import EscalationRecord, ModelIdentity
from kascade.operator.build_distillation import CLAIMS_ROOT, build_distiller_children
from kascade.operator.labels import COMPONENT_ROUTER, selector_labels
from kascade.operator.permissions import OPERATOR_RULES, rule_allows
from kascade.runtime.cluster_status.report import replica_slot_patch
from kascade.runtime.escalation.segments import SegmentStore, records_table
from kascade.testing import StandinApiServer
from kascade.testing.operator_cluster import OPERATOR_AGENTS, Cluster, manifests, wait_for
from kascade.testing.tiny_models import build_tiny_classifier

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NS, NAME = "llm", "reviews"
SERVING = "pvc://models/small-v1"
REVIEWS = [
    ("This movie was great, I loved it.", "positive", [0.05, 0.95]),
    ("This movie was terrible, I hated it.", "negative", [0.95, 0.05]),
]


def cascade(**distillation: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kascade.dev/v1alpha1",
        "kind": "ModelCascade",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "task": "classify",
            "tiers": [
                {
                    "name": "small",
                    "engine": "transformers",
                    "model": {"uri": SERVING},
                    "accept": {"method": "maxProb", "threshold": 0.9},
                },
                {"name": "large", "engine": "transformers", "model": {"uri": "pvc://models/large"}},
            ],
            "escalationLog": {"enabled": True, "uri": f"pvc://escalations/{NAME}"},
            "distillation": {
                "outputUri": f"pvc://students/{NAME}",
                "minSamples": 30,
                "historyLimit": 1,
                "training": {"steps": 30, "batchSize": 8, "learningRate": 0.01, "temperature": 1},
                "resources": {"gpus": 0},
                **distillation,
            },
        },
    }


def write_log(folder: Path) -> None:
    """40 classify escalations, as the routers' writer keeps them: the large tier's label and probabilities."""
    large = ModelIdentity(tier="large", served_model="large", uri="pvc://models/large")
    small = ModelIdentity(tier="small", served_model="small", uri=SERVING)
    records = [
        EscalationRecord(
            id=f"r{i}-{n}",
            cascade=NAME,
            recorded_at=datetime.now(UTC),
            endpoint="classify",
            request=json.dumps({"input": text}),
            answered_by=large,
            answer=label,
            class_probs=probs,
            declined=[{"model": small, "text": "?", "score": 0.5, "method": "maxProb", "threshold": 0.9}],
        )
        for i, (text, label, probs) in enumerate(REVIEWS)
        for n in range(20)
    ]
    folder.mkdir(parents=True)
    SegmentStore(str(folder)).write("escalations-20261130T000000Z-e2e-000001.parquet", records_table(records))


@pytest.fixture(scope="module")
def claims(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The claims the runs mount, as folders: models (the serving student, the teacher), the log, the students."""
    root = tmp_path_factory.mktemp("claims")
    build_tiny_classifier(root / "models" / "small-v1", seed=3)
    build_tiny_classifier(root / "models" / "large", seed=7)
    write_log(root / "escalations" / NAME)
    (root / "students").mkdir()
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("e2e-distillation")
    with StandinApiServer(controller_delay=0.2) as server:
        running = Cluster(server=server, tmp=tmp, namespace=NS, name=NAME)
        running.kubectl("apply", "-f", str(Path(__file__).resolve().parents[2] / "crds"))
        for crd in ("modelcascades.kascade.dev", "distillations.kascade.dev"):
            wait_for(
                lambda crd=crd: any(
                    c["type"] == "Established"
                    for c in ((server.get("crd", crd) or {}).get("status") or {}).get("conditions", [])
                ),
                what=crd,
            )
        running.kubectl(
            "apply", "-f", "-", input=manifests({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        )
        running.start_operator()
        try:
            yield running
        finally:
            running.stop_operator()


# --- helpers ------------------------------------------------------------------------------


def log_escalations(cluster: Cluster, count: int) -> None:
    """A router replica's slot with `count` logged escalations, written as the router writes it."""
    if cluster.server.get("pods", "reviews-router-a", NS) is None:
        cluster.server.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "reviews-router-a",
                    "namespace": NS,
                    "labels": selector_labels(NAME, COMPONENT_ROUTER),
                },
                "spec": {"containers": [{"name": "router", "image": "kascade-runtime"}]},
            }
        )
    slot = CounterSlot(process_id="router-a-1", escalations_logged=count)
    patch = replica_slot_patch(slot, "reviews-router-a")
    cluster.kubectl(
        "patch", "modelcascade", NAME, "-n", NS, "--subresource=status", "--type=merge", "-p", json.dumps(patch)
    )


def distillations(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in cluster.server.objects("distillations", NS)}


def new_run(cluster: Cluster, known: set[str]) -> dict[str, Any]:
    name = wait_for(
        lambda: next(iter(set(distillations(cluster)) - known), None),
        what="a new Distillation",
        context=cluster.log_tail,
    )
    wait_for(lambda: cluster.server.get("jobs", name, NS), what=f"the Job of {name}", context=cluster.log_tail)
    return distillations(cluster)[name]


def run_pod(cluster: Cluster, claims: Path, run: str) -> subprocess.CompletedProcess[str]:
    """What the Job's pod would do: its container's command, claims mapped here, reports to the stand-in."""
    job = cluster.server.get("jobs", run, NS)
    assert job is not None
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = [arg.replace(CLAIMS_ROOT, str(claims)) for arg in container["args"]]
    token = cluster.tmp / "distill-token"
    token.write_text("e2e-distill-token\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "kascade", *args, "--api-server", cluster.server.url, "--token-file", str(token)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )


def finish_job(cluster: Cluster, run: str, condition: str, reason: str = "") -> None:
    """The Job controller's part: the Job's end in its status."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    counts = {"succeeded": 1} if condition == "Complete" else {"failed": 3}
    status = {
        **counts,
        "startTime": now,
        "conditions": [
            {
                "type": condition,
                "status": "True",
                "reason": reason,
                "message": f"e2e: {reason or condition}",
                "lastProbeTime": now,
                "lastTransitionTime": now,
            }
        ],
    }
    cluster.kubectl(
        "patch", "job", run, "-n", NS, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status})
    )


def promotion(cluster: Cluster, run: str) -> dict[str, Any]:
    return wait_for(
        lambda: ((distillations(cluster).get(run) or {}).get("status") or {}).get("promotion"),
        timeout=30,
        what=f"the decision about {run}",
        context=cluster.log_tail,
    )


def small_tier_uri(cluster: Cluster) -> str:
    return cluster.cascade()["spec"]["tiers"][0]["model"]["uri"]


def small_deployment(cluster: Cluster) -> dict[str, Any]:
    found = cluster.server.get("deployments", "reviews-small", NS)
    assert found is not None
    return found


def served_claim(deployment: dict[str, Any]) -> str:
    volumes = deployment["spec"]["template"]["spec"].get("volumes") or []
    return next(v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v)


# --- the story ----------------------------------------------------------------------------


def test_a_cascade_waits_for_enough_new_escalations(cluster: Cluster, claims: Path):
    cluster.kubectl("apply", "-f", "-", input=manifests(cascade()))
    waiting = wait_for(
        lambda: (cluster.status().get("distillation") or {}).get("waiting"),
        context=cluster.log_tail,
        what="status.distillation.waiting",
    )
    assert waiting == "0 of 30 new escalation records since the last run"
    assert cluster.server.get("serviceaccounts", "reviews-distill", NS) is not None
    assert distillations(cluster) == {}


def test_a_run_that_passes_the_gate_is_promoted_and_the_tier_rolls_out(cluster: Cluster, claims: Path):
    log_escalations(cluster, 40)
    run = new_run(cluster, set())
    name = run["metadata"]["name"]
    assert run["spec"]["student"] == SERVING and run["spec"]["output"] == f"pvc://students/{NAME}/{name}"
    assert run["metadata"]["ownerReferences"][0]["name"] == NAME
    done = run_pod(cluster, claims, name)
    assert done.returncode == 0, done.stdout + done.stderr
    status = distillations(cluster)[name]["status"]
    assert status["phase"] == "Succeeded" and status["gate"]["passed"] and status["after"]["answerAgreement"] == 1.0
    log_escalations(cluster, 80)  # enough for the next run already: it must start from the promoted student
    finish_job(cluster, name, "Complete")
    decided = promotion(cluster, name)
    assert decided["promoted"] and decided["reason"] == "Promoted" and decided["previousModel"] == SERVING
    assert decided["replaces"] == SERVING
    wait_for(
        lambda: served_claim(small_deployment(cluster)) == "students",
        what="the tier serving the new student",
        context=cluster.log_tail,
    )
    assert small_tier_uri(cluster) == SERVING, "the spec is the user's: the promotion lives in the run's status"
    summary = wait_for(
        lambda: (
            (cluster.status().get("distillation") or {}).get("lastPromoted") == name
            and cluster.status()["distillation"]
        ),
        what="status.distillation",
    )
    assert summary["rollbackTarget"] == SERVING and summary["serving"] == f"pvc://students/{NAME}/{name}"
    assert summary["specModel"] == SERVING and summary["promoted"]["run"] == name
    assert summary["promoted"]["replaces"] == SERVING
    table = cluster.kubectl("get", "distillations", "-n", NS)
    assert name in table and "Succeeded" in table and "Promoted" in table and "+1.0000" in table


def test_a_reapply_of_the_users_manifest_keeps_the_promotion(cluster: Cluster, claims: Path):
    promoted = cluster.status()["distillation"]["serving"]
    generation = small_deployment(cluster)["metadata"].get("generation")
    cluster.kubectl("apply", "-f", "-", input=manifests(cascade()))  # client-side, as the user applied it first
    cluster.kubectl("apply", "--server-side", "--field-manager=gitops", "-f", "-", input=manifests(cascade()))
    time.sleep(4 * cluster.interval_s)  # reconciles, drift loop included
    assert small_tier_uri(cluster) == SERVING
    assert served_claim(small_deployment(cluster)) == "students"
    assert small_deployment(cluster)["metadata"].get("generation") == generation, "the tier did not roll"
    assert cluster.status()["distillation"]["serving"] == promoted


def test_a_run_that_fails_the_gate_leaves_the_deployment_untouched(cluster: Cluster, claims: Path):
    serving = cluster.status()["distillation"]["serving"]
    before = small_deployment(cluster)["metadata"]["resourceVersion"]
    first = cluster.status()["distillation"]["lastPromoted"]
    run = new_run(cluster, {first})  # 80 were logged before the promotion: it is due already
    name = run["metadata"]["name"]
    assert run["spec"]["student"] == serving, "the next run starts from the promoted student"
    assert len(distillations(cluster)) == 2, "one run after the promotion, not one from the old student too"
    done = run_pod(cluster, claims, name)
    assert done.returncode == 0, done.stdout + done.stderr
    finish_job(cluster, name, "Complete")
    decided = promotion(cluster, name)
    assert not decided["promoted"] and decided["reason"] == "GateFailed" and "needs at least" in decided["message"]
    assert small_tier_uri(cluster) == SERVING and cluster.status()["distillation"]["serving"] == serving
    assert small_deployment(cluster)["metadata"]["resourceVersion"] == before
    events = cluster.kubectl("get", "events", "-n", NS, "-o", "json")
    assert "NotPromoted" in events


def test_a_rollback_is_one_field(cluster: Cluster, claims: Path):
    # Was: the tier's model.uri patched back to the rollback target. The spec still holds it, so the edit is the
    # one field a manifest in git can carry: promotion Manual serves model.uri.
    first = cluster.status()["distillation"]["lastPromoted"]
    cluster.kubectl("apply", "-f", "-", input=manifests(cascade(promotion="Manual")))
    wait_for(
        lambda: served_claim(small_deployment(cluster)) == "models",
        what="the tier back on the old model",
        context=cluster.log_tail,
    )
    wait_for(lambda: cluster.status()["distillation"]["serving"] == SERVING, what="status.distillation.serving")
    withdrawn = distillations(cluster)[first]["status"]["promotion"]
    assert withdrawn["withdrawnAt"] and withdrawn["withdrawal"].startswith("spec.distillation.promotion is Manual")
    assert "was withdrawn" in cluster.status()["distillation"]["message"]
    cluster.kubectl("apply", "-f", "-", input=manifests(cascade()))  # Automatic again: promotes the next passed run
    time.sleep(4 * cluster.interval_s)
    assert served_claim(small_deployment(cluster)) == "models", "a withdrawn promotion never comes back"


def test_a_run_whose_job_fails_is_failed_and_never_promoted(cluster: Cluster, claims: Path):
    log_escalations(cluster, 120)
    name = new_run(cluster, set(distillations(cluster)))["metadata"]["name"]
    finish_job(cluster, name, "Failed", "BackoffLimitExceeded")
    decided = promotion(cluster, name)
    assert decided["reason"] == "RunFailed" and "BackoffLimitExceeded" in decided["message"]
    assert distillations(cluster)[name]["status"]["phase"] == "Failed"
    assert small_tier_uri(cluster) == SERVING


def test_a_run_that_failed_is_decided_only_once_its_job_stops_retrying(cluster: Cluster, claims: Path):
    log_escalations(cluster, 160)
    name = new_run(cluster, set(distillations(cluster)))["metadata"]["name"]
    failed = {"status": {"phase": "Failed", "message": "RuntimeError: CUDA out of memory"}}  # what the pod reports
    cluster.kubectl(
        "patch", "distillation", name, "-n", NS, "--subresource=status", "--type=merge", "-p", json.dumps(failed)
    )
    log_escalations(cluster, 200)  # due again: yet no run starts, and none is deleted, while this one may be retried
    runs_before = set(distillations(cluster))
    time.sleep(6 * cluster.interval_s)
    assert "promotion" not in distillations(cluster)[name]["status"] and set(distillations(cluster)) == runs_before
    finish_job(cluster, name, "Failed", "BackoffLimitExceeded")
    decided = promotion(cluster, name)
    assert decided["reason"] == "RunFailed" and "CUDA out of memory" in decided["message"]
    newer = new_run(cluster, runs_before)["metadata"]["name"]  # decided now: the next run may start
    kept = wait_for(
        lambda: len(distillations(cluster)) == 3 and set(distillations(cluster)),
        what="runs beyond the history limit deleted",
    )
    assert {name, newer, cluster.status()["distillation"]["lastPromoted"]} == kept, "the rollback target's run stays"


def test_a_run_made_by_hand_for_no_distilling_cascade_says_why_it_never_runs(cluster: Cluster, claims: Path):
    run = {
        "apiVersion": "kascade.dev/v1alpha1",
        "kind": "Distillation",
        "metadata": {"name": "by-hand", "namespace": NS},
        "spec": {
            "cascade": "nowhere",
            "tier": "small",
            "student": SERVING,
            "data": f"pvc://escalations/{NAME}",
            "output": "pvc://students/by-hand",
        },
    }
    cluster.kubectl("apply", "-f", "-", input=manifests(run))
    status = wait_for(
        lambda: (distillations(cluster)["by-hand"].get("status") or {}).get("phase"),
        what="the run's status",
        context=cluster.log_tail,
    )
    assert status == "Failed"
    assert distillations(cluster)["by-hand"]["status"]["message"] == "cascade nowhere does not exist in namespace llm"
    assert cluster.server.get("jobs", "by-hand", NS) is None


def test_every_call_was_allowed_to_whoever_made_it(cluster: Cluster, claims: Path, monkeypatch: pytest.MonkeyPatch):
    requests = [r for r in cluster.server.requests if r.resource is not None]
    operator = [r for r in requests if r.user_agent.startswith(OPERATOR_AGENTS)]
    for request in operator:
        resource = request.resource if request.subresource is None else f"{request.resource}/{request.subresource}"
        assert rule_allows(OPERATOR_RULES, verb=request.verb, group=request.group or "", resource=resource), request
    called = {(r.verb, r.resource, r.subresource) for r in operator}
    assert {
        ("create", "distillations", None),
        ("delete", "distillations", None),
        ("create", "jobs", None),
        ("patch", "distillations", "status"),
        ("patch", "modelcascades", None),
    } <= called
    # The Helm chart's Roles grant them too (namespaced mode, as installed).
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "charts"))
    from chart_testkit import by_kind, render_values
    from rbac_coverage import check_rbac

    objects = render_values({"watch": {"namespaces": [NS]}, "rbac": {"clusterReads": True}})
    report = check_rbac(operator, by_kind(objects, "Role") + by_kind(objects, "ClusterRole"))
    assert report.not_allowed == [], report.explain()
    spec_writes = [
        r
        for r in operator
        if r.resource == "modelcascades" and r.subresource is None and r.is_write and _touches_spec(r.body)
    ]
    assert spec_writes == [], "the operator never writes a cascade's spec"
    role = next(c for c in build_distiller_children(_parsed()) if c["kind"] == "Role")
    runs = [
        r
        for r in requests
        if r.resource == "distillations"
        and not r.user_agent.startswith(OPERATOR_AGENTS)
        and not r.user_agent.startswith("kubectl")
    ]
    assert runs, "the runs reported into their Distillations"
    for request in runs:
        rule = role["rules"][0]
        assert f"{request.resource}/{request.subresource}" in rule["resources"] and request.verb in rule["verbs"]


def _touches_spec(body: Any) -> bool:
    if isinstance(body, list):  # a JSON patch
        return any(str(op.get("path", "")).startswith("/spec") for op in body)
    return isinstance(body, dict) and "spec" in body


def _parsed() -> Any:
    from kascade.api.modelcascade import ModelCascade

    return ModelCascade.model_validate(cascade())
