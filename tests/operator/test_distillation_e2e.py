"""End to end: distillation in the cluster, driven as a user would, with the real operator, kubectl and `kascade distill`.

The stand-in API server has no kubelet: where a Job's pod would run, the test
runs the pod's own command line (`kascade distill …` from the Job the operator
made) as a real process, with the claims it mounts mapped to folders here and
its status reports aimed at the stand-in; then it sets the Job's status as the
Job controller would.

One stand-in and one operator serve the module; every test applies a cascade
of its own (its own name, escalation log and students; deleted when the test
ends), so each passes alone and in any order. A scenario whose steps build on
each other is one test that calls its steps in order:

- a classify cascade with the escalation log and `spec.distillation` waits
  for records (`status.distillation.waiting`);
- a promotion, step by step: a router slot reports 40 logged escalations, a
  Distillation and its Job appear; the run trains on the log, passes the gate
  and is promoted: the tier's Deployment serves the new student while the spec
  keeps the user's `model.uri` (the operator never writes it), and the model it
  replaced is the rollback target; the user's unchanged manifest re-applied
  (client-side and server-side) neither undoes the promotion nor restarts the
  tier; the next run starts from the promoted student and has nothing left to
  learn: the gate fails, the Deployment is untouched and the run says why; a
  rollback is one field of the manifest: `spec.distillation.promotion: Manual`
  serves `model.uri` again, and setting Automatic back does not bring the
  withdrawn promotion back;
- a run whose Job fails is Failed with the Job's reason, never promoted; a run
  the pod reported Failed is decided only once its Job stops retrying, and the
  runs beyond the history limit go while the rollback target's run stays;
- every call the operator made is in its RBAC rules, none wrote the cascade's
  spec, and every call a run made is in the Role the operator gave it: checked
  after every test for the calls it caused, and over a whole run history
  (promotion, failures, a deletion) by a test of its own.
"""

from __future__ import annotations

import hashlib
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

NS = "llm"
SERVING = "pvc://models/small-v1"
REVIEWS = [
    ("This movie was great, I loved it.", "positive", [0.05, 0.95]),
    ("This movie was terrible, I hated it.", "negative", [0.95, 0.05]),
]


def cascade(name: str, **distillation: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kascade.dev/v1alpha1",
        "kind": "ModelCascade",
        "metadata": {"name": name, "namespace": NS},
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
            "escalationLog": {"enabled": True, "uri": f"pvc://escalations/{name}"},
            "distillation": {
                "outputUri": f"pvc://students/{name}",
                "minSamples": 30,
                "historyLimit": 1,
                "training": {"steps": 30, "batchSize": 8, "learningRate": 0.01, "temperature": 1},
                "resources": {"gpus": 0},
                **distillation,
            },
        },
    }


def write_log(folder: Path, name: str) -> None:
    """40 classify escalations of cascade `name`, as the routers' writer keeps them: the large tier's label and
    probabilities."""
    large = ModelIdentity(tier="large", served_model="large", uri="pvc://models/large")
    small = ModelIdentity(tier="small", served_model="small", uri=SERVING)
    records = [
        EscalationRecord(
            id=f"r{i}-{n}",
            cascade=name,
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
    """The claims the runs mount, as folders: models (the serving student, the teacher), the students; each test's
    cascade writes its own escalation log (`reviews`)."""
    root = tmp_path_factory.mktemp("claims")
    build_tiny_classifier(root / "models" / "small-v1", seed=3)
    build_tiny_classifier(root / "models" / "large", seed=7)
    (root / "escalations").mkdir()
    (root / "students").mkdir()
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("e2e-distillation")
    with StandinApiServer(controller_delay=0.2) as server:
        running = Cluster(server=server, tmp=tmp, namespace=NS)
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


@pytest.fixture
def reviews(cluster: Cluster, claims: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The module's cluster, looking at this test's own cascade (a name of its own, with its escalation log).

    The cascade is applied by the test; when it ends, the cascade goes with its runs and Jobs, and every call the
    test caused is checked against the permissions of whoever made it.
    """
    cluster.name = "reviews-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]
    write_log(claims / "escalations" / cluster.name, cluster.name)
    mark = cluster.server.mark()
    yield cluster
    cluster.kubectl("delete", "modelcascade", cluster.name, "-n", NS, "--ignore-not-found", "--timeout=30s")
    for pod in cluster.server.objects("pods", NS, label_selector=f"kascade.dev/cascade={cluster.name}"):
        cluster.server.delete("pods", pod["metadata"]["name"], namespace=NS)
    wait_for(lambda: not distillations(cluster), what=f"the runs of {cluster.name} to be garbage-collected")
    assert_every_call_allowed(cluster, cluster.server.requests[mark:])


# --- helpers ------------------------------------------------------------------------------


def log_escalations(cluster: Cluster, count: int) -> None:
    """A router replica's slot with `count` logged escalations, written as the router writes it."""
    pod = f"{cluster.name}-router-a"
    if cluster.server.get("pods", pod, NS) is None:
        cluster.server.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "namespace": NS, "labels": selector_labels(cluster.name, COMPONENT_ROUTER)},
                "spec": {"containers": [{"name": "router", "image": "kascade-runtime"}]},
            }
        )
    slot = CounterSlot(process_id="router-a-1", escalations_logged=count)
    patch = replica_slot_patch(slot, pod)
    cluster.kubectl(
        "patch", "modelcascade", cluster.name, "-n", NS, "--subresource=status", "--type=merge", "-p", json.dumps(patch)
    )


def distillations(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """The runs of the test's cascade."""
    runs = cluster.server.objects("distillations", NS)
    return {d["metadata"]["name"]: d for d in runs if d["spec"]["cascade"] == cluster.name}


def decided_runs(cluster: Cluster) -> set[str]:
    """The runs with a decision in their status (one at a time runs: any other is the next one)."""
    return {name for name, run in distillations(cluster).items() if (run.get("status") or {}).get("promotion")}


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
    found = cluster.server.get("deployments", f"{cluster.name}-small", NS)
    assert found is not None
    return found


def served_claim(deployment: dict[str, Any]) -> str:
    volumes = deployment["spec"]["template"]["spec"].get("volumes") or []
    return next(v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v)


def apply(cluster: Cluster, **distillation: Any) -> None:
    """`kubectl apply` of the user's manifest for the test's cascade."""
    cluster.kubectl("apply", "-f", "-", input=manifests(cascade(cluster.name, **distillation)))


def fail_a_run(cluster: Cluster, logged: int) -> tuple[str, dict[str, Any]]:
    """`logged` escalations make a run due; its Job fails for good. Returns the run's name and the decision."""
    log_escalations(cluster, logged)
    name = new_run(cluster, decided_runs(cluster))["metadata"]["name"]  # it may have started before this count
    finish_job(cluster, name, "Failed", "BackoffLimitExceeded")
    return name, promotion(cluster, name)


def assert_every_call_allowed(cluster: Cluster, requests: list[Any]) -> None:
    """The operator's calls are in its rules and in the Helm chart's Roles (namespaced mode, as installed), none
    writes a cascade's spec; the runs' calls are in the Role the operator gives them."""
    requests = [r for r in requests if r.resource is not None]
    operator = [r for r in requests if r.user_agent.startswith(OPERATOR_AGENTS)]
    for request in operator:
        resource = request.resource if request.subresource is None else f"{request.resource}/{request.subresource}"
        assert rule_allows(OPERATOR_RULES, verb=request.verb, group=request.group or "", resource=resource), request
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "charts"))
    try:
        from chart_testkit import by_kind, render_values
        from rbac_coverage import check_rbac
    finally:
        sys.path.pop(0)
    objects = render_values({"watch": {"namespaces": [NS]}, "rbac": {"clusterReads": True}})
    report = check_rbac(operator, by_kind(objects, "Role") + by_kind(objects, "ClusterRole"))
    assert report.not_allowed == [], report.explain()
    spec_writes = [
        r
        for r in operator
        if r.resource == "modelcascades" and r.subresource is None and r.is_write and _touches_spec(r.body)
    ]
    assert spec_writes == [], "the operator never writes a cascade's spec"
    rule = next(c for c in build_distiller_children(_parsed(cluster.name)) if c["kind"] == "Role")["rules"][0]
    for request in run_calls(requests):
        assert f"{request.resource}/{request.subresource}" in rule["resources"] and request.verb in rule["verbs"]


def run_calls(requests: list[Any]) -> list[Any]:
    """What the runs (`kascade distill --report-to`) called: neither the operator nor kubectl."""
    return [
        r
        for r in requests
        if r.resource == "distillations"
        and not r.user_agent.startswith(OPERATOR_AGENTS)
        and not r.user_agent.startswith("kubectl")
    ]


# --- the steps and the scenarios ------------------------------------------------------------------------


def test_a_cascade_waits_for_enough_new_escalations(reviews: Cluster):
    apply(reviews)
    waiting = wait_for(
        lambda: (reviews.status().get("distillation") or {}).get("waiting"),
        context=reviews.log_tail,
        what="status.distillation.waiting",
    )
    assert waiting == "0 of 30 new escalation records since the last run"
    assert reviews.server.get("serviceaccounts", f"{reviews.name}-distill", NS) is not None
    assert distillations(reviews) == {}


def a_run_that_passes_the_gate_is_promoted_and_the_tier_rolls_out(reviews: Cluster, claims: Path) -> str:
    """The cascade applied, 40 escalations logged: the first run trains, passes the gate and is promoted (80 are
    logged by then, so the next run is due at once). Returns the promoted run's name."""
    apply(reviews)
    log_escalations(reviews, 40)
    run = new_run(reviews, set())
    name = run["metadata"]["name"]
    assert run["spec"]["student"] == SERVING and run["spec"]["output"] == f"pvc://students/{reviews.name}/{name}"
    assert run["metadata"]["ownerReferences"][0]["name"] == reviews.name
    done = run_pod(reviews, claims, name)
    assert done.returncode == 0, done.stdout + done.stderr
    status = distillations(reviews)[name]["status"]
    assert status["phase"] == "Succeeded" and status["gate"]["passed"] and status["after"]["answerAgreement"] == 1.0
    log_escalations(reviews, 80)  # enough for the next run already: it must start from the promoted student
    finish_job(reviews, name, "Complete")
    decided = promotion(reviews, name)
    assert decided["promoted"] and decided["reason"] == "Promoted" and decided["previousModel"] == SERVING
    assert decided["replaces"] == SERVING
    wait_for(
        lambda: served_claim(small_deployment(reviews)) == "students",
        what="the tier serving the new student",
        context=reviews.log_tail,
    )
    assert small_tier_uri(reviews) == SERVING, "the spec is the user's: the promotion lives in the run's status"
    summary = wait_for(
        lambda: (
            (reviews.status().get("distillation") or {}).get("lastPromoted") == name
            and reviews.status()["distillation"]
        ),
        what="status.distillation",
    )
    assert summary["rollbackTarget"] == SERVING and summary["serving"] == f"pvc://students/{reviews.name}/{name}"
    assert summary["specModel"] == SERVING and summary["promoted"]["run"] == name
    assert summary["promoted"]["replaces"] == SERVING
    table = reviews.kubectl("get", "distillations", "-n", NS)
    assert name in table and "Succeeded" in table and "Promoted" in table and "+1.0000" in table
    return name


def a_reapply_of_the_users_manifest_keeps_the_promotion(reviews: Cluster) -> None:
    promoted = reviews.status()["distillation"]["serving"]
    generation = small_deployment(reviews)["metadata"].get("generation")
    apply(reviews)  # client-side, as the user applied it first
    reviews.kubectl(
        "apply", "--server-side", "--field-manager=gitops", "-f", "-", input=manifests(cascade(reviews.name))
    )
    time.sleep(4 * reviews.interval_s)  # reconciles, drift loop included
    assert small_tier_uri(reviews) == SERVING
    assert served_claim(small_deployment(reviews)) == "students"
    assert small_deployment(reviews)["metadata"].get("generation") == generation, "the tier did not roll"
    assert reviews.status()["distillation"]["serving"] == promoted


def the_next_run_fails_the_gate_and_leaves_the_deployment_untouched(reviews: Cluster, claims: Path, first: str) -> None:
    serving = reviews.status()["distillation"]["serving"]
    before = small_deployment(reviews)["metadata"]["resourceVersion"]
    run = new_run(reviews, {first})  # 80 were logged before the promotion: it is due already
    name = run["metadata"]["name"]
    assert run["spec"]["student"] == serving, "the next run starts from the promoted student"
    assert len(distillations(reviews)) == 2, "one run after the promotion, not one from the old student too"
    done = run_pod(reviews, claims, name)
    assert done.returncode == 0, done.stdout + done.stderr
    finish_job(reviews, name, "Complete")
    decided = promotion(reviews, name)
    assert not decided["promoted"] and decided["reason"] == "GateFailed" and "needs at least" in decided["message"]
    assert small_tier_uri(reviews) == SERVING and reviews.status()["distillation"]["serving"] == serving
    assert small_deployment(reviews)["metadata"]["resourceVersion"] == before
    events = reviews.kubectl("get", "events", "-n", NS, "-o", "json")
    assert "NotPromoted" in events


def a_rollback_is_one_field(reviews: Cluster, first: str) -> None:
    # The spec still holds the user's model.uri, so the rollback is the one field a manifest in git can carry:
    # promotion Manual serves model.uri.
    apply(reviews, promotion="Manual")
    wait_for(
        lambda: served_claim(small_deployment(reviews)) == "models",
        what="the tier back on the old model",
        context=reviews.log_tail,
    )
    wait_for(lambda: reviews.status()["distillation"]["serving"] == SERVING, what="status.distillation.serving")
    withdrawn = distillations(reviews)[first]["status"]["promotion"]
    assert withdrawn["withdrawnAt"] and withdrawn["withdrawal"].startswith("spec.distillation.promotion is Manual")
    assert "was withdrawn" in reviews.status()["distillation"]["message"]
    apply(reviews)  # Automatic again: promotes the next passed run
    time.sleep(4 * reviews.interval_s)
    assert served_claim(small_deployment(reviews)) == "models", "a withdrawn promotion never comes back"


def test_a_promotion_survives_a_reapply_and_the_next_run_and_is_rolled_back_by_one_field(
    reviews: Cluster, claims: Path
):
    """One scenario, its steps in order: each needs the promotion the first one made."""
    first = a_run_that_passes_the_gate_is_promoted_and_the_tier_rolls_out(reviews, claims)
    a_reapply_of_the_users_manifest_keeps_the_promotion(reviews)
    the_next_run_fails_the_gate_and_leaves_the_deployment_untouched(reviews, claims, first)
    a_rollback_is_one_field(reviews, first)


def test_a_run_whose_job_fails_is_failed_and_never_promoted(reviews: Cluster):
    apply(reviews)
    name, decided = fail_a_run(reviews, 120)
    assert decided["reason"] == "RunFailed" and "BackoffLimitExceeded" in decided["message"]
    assert distillations(reviews)[name]["status"]["phase"] == "Failed"
    assert small_tier_uri(reviews) == SERVING


def test_a_run_that_failed_is_decided_only_once_its_job_stops_retrying(reviews: Cluster, claims: Path):
    promoted = a_run_that_passes_the_gate_is_promoted_and_the_tier_rolls_out(reviews, claims)
    fail_a_run(reviews, 120)  # a decided run that the history limit will remove
    log_escalations(reviews, 160)
    name = new_run(reviews, decided_runs(reviews))["metadata"]["name"]
    failed = {"status": {"phase": "Failed", "message": "RuntimeError: CUDA out of memory"}}  # what the pod reports
    reviews.kubectl(
        "patch", "distillation", name, "-n", NS, "--subresource=status", "--type=merge", "-p", json.dumps(failed)
    )
    log_escalations(reviews, 200)  # due again: yet no run starts, and none is deleted, while this one may be retried
    runs_before = set(distillations(reviews))
    time.sleep(6 * reviews.interval_s)
    assert "promotion" not in distillations(reviews)[name]["status"] and set(distillations(reviews)) == runs_before
    finish_job(reviews, name, "Failed", "BackoffLimitExceeded")
    decided = promotion(reviews, name)
    assert decided["reason"] == "RunFailed" and "CUDA out of memory" in decided["message"]
    newer = new_run(reviews, runs_before)["metadata"]["name"]  # decided now: the next run may start
    kept = wait_for(
        lambda: len(distillations(reviews)) == 3 and set(distillations(reviews)),
        what="runs beyond the history limit deleted",
    )
    assert promoted == reviews.status()["distillation"]["lastPromoted"]
    assert {name, newer, promoted} == kept, "the rollback target's run stays"


def test_a_run_made_by_hand_for_no_distilling_cascade_says_why_it_never_runs(reviews: Cluster):
    cluster = reviews  # no cascade of its own: the run names one that does not exist
    run = {
        "apiVersion": "kascade.dev/v1alpha1",
        "kind": "Distillation",
        "metadata": {"name": "by-hand", "namespace": NS},
        "spec": {
            "cascade": "nowhere",
            "tier": "small",
            "student": SERVING,
            "data": "pvc://escalations/nowhere",
            "output": "pvc://students/by-hand",
        },
    }
    cluster.kubectl("apply", "-f", "-", input=manifests(run))
    try:
        status = wait_for(
            lambda: ((cluster.server.get("distillations", "by-hand", NS) or {}).get("status") or {}).get("phase"),
            what="the run's status",
            context=cluster.log_tail,
        )
        assert status == "Failed"
        found = cluster.server.get("distillations", "by-hand", NS)
        assert found is not None
        assert found["status"]["message"] == "cascade nowhere does not exist in namespace llm"
        assert cluster.server.get("jobs", "by-hand", NS) is None
    finally:
        cluster.kubectl("delete", "distillation", "by-hand", "-n", NS, "--ignore-not-found")


def test_every_call_was_allowed_to_whoever_made_it(reviews: Cluster, claims: Path):
    """A whole run history (a promotion, failed runs, one deleted past the history limit), then every call so far."""
    a_run_that_passes_the_gate_is_promoted_and_the_tier_rolls_out(reviews, claims)
    second, _ = fail_a_run(reviews, 120)
    fail_a_run(reviews, 160)
    wait_for(lambda: second not in distillations(reviews), what="the run beyond the history limit deleted")
    requests = [r for r in reviews.server.requests if r.resource is not None]
    called = {(r.verb, r.resource, r.subresource) for r in requests if r.user_agent.startswith(OPERATOR_AGENTS)}
    assert {
        ("create", "distillations", None),
        ("delete", "distillations", None),
        ("create", "jobs", None),
        ("patch", "distillations", "status"),
        ("patch", "modelcascades", None),
    } <= called
    assert run_calls(requests), "the runs reported into their Distillations"
    assert_every_call_allowed(reviews, requests)


def _touches_spec(body: Any) -> bool:
    if isinstance(body, list):  # a JSON patch
        return any(str(op.get("path", "")).startswith("/spec") for op in body)
    return isinstance(body, dict) and "spec" in body


def _parsed(name: str) -> Any:
    from kascade.api.modelcascade import ModelCascade

    return ModelCascade.model_validate(cascade(name))
