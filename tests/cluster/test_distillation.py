"""Distillation on a real control plane: the schedule, the real Job controller, the gate, a GitOps-safe promotion.

kwok plays the kubelet, so nothing runs in the Job's pod: the test plays it. It runs the pod's own
command (`kascade distill … --report-to`, from the Job the operator made) as a process here, with
the claims it mounts mapped to folders and a token of the Job's ServiceAccount (so the Role the
operator gave the run is what the API server enforces), then reports the pod's end as a kubelet
would. In order:

1. a classify cascade with its escalation log and `spec.distillation` in a restricted namespace;
2. a router's counter slot, written with the router's ServiceAccount token, reports logged
   escalations: a Distillation appears, the real Job controller creates its pod (admitted under
   "restricted"), the run trains and passes the gate, the pod succeeds, the Job completes, the
   operator promotes and the tier rolls out the student;
3. the user's unchanged manifest re-applied with `kubectl apply --server-side` (another field
   manager, as a GitOps tool) and with client-side apply: no conflict, the promotion stays;
4. the rollback in docs/distillation.md, one field of the manifest (`promotion: Manual`), serves
   `model.uri` again.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from cluster_testkit import GROUP, Installed, restricted_namespace, shared_claim, wait_for, yaml_docs

from kascade.api.counters import CounterSlot
from kascade.api.escalation_record import EscalationRecord, ModelIdentity
from kascade.operator.build_distillation import CLAIMS_ROOT
from kascade.runtime.cluster_status.report import replica_slot_patch
from kascade.runtime.escalation.segments import SegmentStore, records_table
from kascade.testing.tiny_models import build_tiny_classifier

pytestmark = pytest.mark.timeout(600)

NS, NAME = "distilling", "reviews"
SERVING = "pvc://models/small-v1"
REVIEWS = [
    ("This movie was great, I loved it.", "positive", [0.05, 0.95]),
    ("This movie was terrible, I hated it.", "negative", [0.95, 0.05]),
]


def cascade(**distillation: Any) -> dict[str, Any]:
    return {
        "apiVersion": GROUP,
        "kind": "ModelCascade",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "task": "classify",
            "tiers": [
                {
                    "name": "small",
                    "engine": "transformers",
                    "model": {"uri": SERVING},
                    "resources": {"gpus": 0},
                    "accept": {"method": "maxProb", "threshold": 0.9},
                },
                {
                    "name": "large",
                    "engine": "transformers",
                    "model": {"uri": "pvc://models/large"},
                    "resources": {"gpus": 0},
                },
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


@pytest.fixture(scope="module")
def claims(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the claims hold, as folders here: the serving student and the teacher, the log, the students."""
    root = tmp_path_factory.mktemp("claims")
    build_tiny_classifier(root / "models" / "small-v1", seed=3)
    build_tiny_classifier(root / "models" / "large", seed=7)
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
    (root / "escalations" / NAME).mkdir(parents=True)
    SegmentStore(str(root / "escalations" / NAME)).write(
        "escalations-20261130T000000Z-e2e-000001.parquet", records_table(records)
    )
    (root / "students").mkdir()
    return root


@pytest.fixture(scope="module")
def distilling(installed: Installed, claims: Path) -> Installed:
    claim_objects = [obj for claim in ("models", "escalations", "students") for obj in shared_claim(claim, NS)]
    installed.plane.kubectl("apply", "-f", "-", input=yaml_docs(restricted_namespace(NS), *claim_objects))
    return installed


def status(installed: Installed) -> dict[str, Any]:
    return installed.cascade(NAME, NS).get("status") or {}


def runs(installed: Installed) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in installed.plane.list("distillations", namespace=NS, group=GROUP)}


def small_deployment(installed: Installed) -> dict[str, Any]:
    found = installed.plane.get("deployments", f"{NAME}-small", namespace=NS, group="apps/v1")
    assert found is not None
    return found


def served_claim(deployment: dict[str, Any]) -> str:
    volumes = deployment["spec"]["template"]["spec"].get("volumes") or []
    return next(v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v)


def rolled_out(installed: Installed, claim: str) -> bool:
    deployment = small_deployment(installed)
    state = deployment.get("status", {})
    pods = [
        p
        for p in installed.plane.list("pods", namespace=NS, label_selector="kascade.dev/tier=small")
        if not p["metadata"].get("deletionTimestamp")
    ]
    return (
        served_claim(deployment) == claim
        and state.get("observedGeneration") == deployment["metadata"]["generation"]
        and state.get("updatedReplicas") == state.get("readyReplicas") == state.get("replicas")
        and all(served_claim({"spec": {"template": p}}) == claim for p in pods)
    )


def as_service_account(installed: Installed, account: str, name: str) -> Path:
    token = installed.plane.token_for(account, NS)
    return installed.plane.kubeconfig_for_token(token, installed.tmp / f"{name}.kubeconfig")


def log_escalations(installed: Installed, count: int) -> None:
    """A live router pod's slot reports `count` logged escalations, written with the router's own token."""
    pod = next(
        p["metadata"]["name"]
        for p in installed.plane.list("pods", namespace=NS, label_selector="app.kubernetes.io/component=router")
    )
    patch = replica_slot_patch(CounterSlot(process_id="router-1", escalations_logged=count), pod)
    kubeconfig = as_service_account(installed, f"{NAME}-router", "router")
    installed.plane.kubectl(
        "patch",
        "modelcascade",
        NAME,
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(patch),
        kubeconfig=kubeconfig,
    )


def test_a_distilling_cascade_comes_up_and_waits_for_escalations(distilling: Installed) -> None:
    distilling.plane.kubectl("apply", "-f", "-", input=yaml_docs(cascade()))
    distilling.wait_ready(NAME, NS)
    waiting = wait_for(
        lambda: (status(distilling).get("distillation") or {}).get("waiting"),
        what="status.distillation.waiting",
        context=distilling.context(NS),
    )
    assert waiting == "0 of 30 new escalation records since the last run"
    assert runs(distilling) == {}


def test_a_run_on_the_real_job_controller_is_gated_and_promoted(distilling: Installed, claims: Path) -> None:
    plane = distilling.plane
    log_escalations(distilling, 40)
    name = wait_for(lambda: next(iter(runs(distilling)), None), what="a Distillation", context=distilling.context(NS))
    job = wait_for(
        lambda: plane.get("jobs", name, namespace=NS, group="batch/v1"),
        what=f"the Job of {name}",
        context=distilling.context(NS),
    )
    pod = wait_for(
        lambda: next(
            (
                p
                for p in plane.list("pods", namespace=NS, label_selector=f"job-name={name}")
                if p["status"].get("phase") == "Running"
            ),
            None,
        ),
        what="the Job controller's pod, admitted and Running",
        context=distilling.context(NS),
    )
    # The pod's command, claims mapped here, authenticated as the run's ServiceAccount.
    container = job["spec"]["template"]["spec"]["containers"][0]
    kubeconfig_token = plane.token_for(job["spec"]["template"]["spec"]["serviceAccountName"], NS)
    token = distilling.tmp / "distill-token"
    token.write_text(kubeconfig_token)
    args = [arg.replace(CLAIMS_ROOT, str(claims)) for arg in container["args"]]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kascade",
            *args,
            "--api-server",
            plane.url,
            "--token-file",
            str(token),
            "--ca-file",
            str(plane.ca_file),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_status = runs(distilling)[name]["status"]
    assert run_status["phase"] == "Succeeded" and run_status["gate"]["passed"], run_status
    plane.set_pod_phase(pod["metadata"]["name"], NS, "Succeeded", exit_code=0)  # the kubelet's report

    wait_for(
        lambda: any(
            c["type"] == "Complete" and c["status"] == "True"
            for c in (plane.get("jobs", name, namespace=NS, group="batch/v1") or {})
            .get("status", {})
            .get("conditions", [])
        ),
        what="the Job controller to complete the Job",
        context=distilling.context(NS),
    )
    decided = wait_for(
        lambda: (runs(distilling)[name].get("status") or {}).get("promotion"),
        what="the promotion decision",
        context=distilling.context(NS),
    )
    assert decided["promoted"] and decided["replaces"] == SERVING, decided
    wait_for(
        lambda: rolled_out(distilling, "students"),
        timeout=120,
        what="the student's rollout",
        context=distilling.context(NS),
    )
    assert distilling.cascade(NAME, NS)["spec"]["tiers"][0]["model"]["uri"] == SERVING, "the spec stays the user's"
    assert status(distilling)["distillation"]["serving"] == f"pvc://students/{NAME}/{name}"
    distilling.wait_ready(NAME, NS)


def test_a_gitops_reapply_of_the_manifest_neither_conflicts_nor_undoes_the_promotion(distilling: Installed) -> None:
    plane = distilling.plane
    promoted = status(distilling)["distillation"]["serving"]
    generation = small_deployment(distilling)["metadata"]["generation"]
    server_side = plane.kubectl(
        "apply",
        "--server-side",
        "--field-manager=argocd-controller",
        "-f",
        "-",
        input=yaml_docs(cascade()),
        check=False,
    )
    # A conflict with the user's own earlier client-side apply is between two of the user's tools (GitOps
    # tools force it); none may be with the operator, which owns no spec field.
    managers = set(re.findall(r'with "([^"]+)"', server_side.stderr))
    assert server_side.returncode == 0 or managers == {"kubectl-client-side-apply"}, server_side.stderr
    plane.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=argocd-controller",
        "-f",
        "-",
        input=yaml_docs(cascade()),
    )
    client_side = plane.kubectl("apply", "-f", "-", input=yaml_docs(cascade()), check=False)
    assert client_side.returncode == 0, client_side.stderr
    time.sleep(4)  # a few reconciles (every second here), the drift loop's included
    assert served_claim(small_deployment(distilling)) == "students"
    assert small_deployment(distilling)["metadata"]["generation"] == generation, "the tier did not roll"
    assert status(distilling)["distillation"]["serving"] == promoted
    spec_owners = {
        entry["manager"]
        for entry in distilling.cascade(NAME, NS)["metadata"]["managedFields"]
        if entry.get("subresource") != "status" and "f:spec" in entry.get("fieldsV1", {})
    }
    assert spec_owners <= {"argocd-controller", "kubectl-client-side-apply", "kubectl"}, spec_owners


def test_the_documented_rollback_is_one_field_of_the_manifest(distilling: Installed) -> None:
    distilling.plane.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=argocd-controller",
        "-f",
        "-",
        input=yaml_docs(cascade(promotion="Manual")),
    )
    wait_for(
        lambda: rolled_out(distilling, "models"),
        timeout=120,
        what="the tier back on model.uri",
        context=distilling.context(NS),
    )
    wait_for(lambda: status(distilling)["distillation"]["serving"] == SERVING, what="status.distillation.serving")
    (run,) = runs(distilling).values()
    assert run["status"]["promotion"]["withdrawnAt"], run["status"]["promotion"]
    distilling.wait_ready(NAME, NS)
