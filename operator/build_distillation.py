"""Distillation runs as manifests: the run a cascade's schedule creates, its Job, and the identity it reports with. Pure.

- `build_distillation`: a `Distillation` for the cascade's student tier, from
  `spec.distillation` and the escalation log, starting from the model the tier
  serves now, judged by the cascade's matcher; its output is a folder of its
  own under `outputUri`; the judge its gate asks (matcher judge: the cascade's
  judge.url, else the last tier's Service) and, for a tier with a preRoute,
  the goal its refitted pre-route score is certified for.
- `build_distillation_job`: the Job that runs `kascade distill` for it on a GPU
  node (the runtime's CUDA image), with the claims of the log, the student and
  the output mounted, S3 credentials from a Secret, the run's whole
  `DistillSettings` as one `--settings` argument (`run_settings`: the spec,
  paths as the pod sees them), and `--report-to` so the run writes its
  progress and result into the Distillation's status; Pod Security
  "restricted", a deadline, and node drains that cost no retry.
- the ServiceAccount, Role and RoleBinding `{cascade}-distill`: the runs may
  get and patch the status of Distillations in the namespace, nothing else.
  They are children of the cascade while `spec.distillation` is set.
"""

from __future__ import annotations

import posixpath
from typing import Any

from kascade.api.agreement import SEMANTIC_CUTOFF, AnswerMatcher, Judge
from kascade.api.distill_settings import JUDGE_API_KEY_ENV, DistillSettings
from kascade.api.distillation import (
    DISTILLATION_KIND,
    DISTILLATION_PLURAL,
    REFUSED_EXIT_CODE,
    Distillation,
    DistillationSpec,
)
from kascade.api.model_uri import ModelUri
from kascade.api.modelcascade import API_VERSION, GROUP, ModelCascade, Tier
from kascade.operator.build_tier import (
    cascade_namespace,
    tier_node_selector,
    tier_resources,
    tier_service_url,
    tier_tolerations,
)
from kascade.operator.labels import child_name, common_labels, label_value, with_spec_hash
from kascade.operator.pod_security import restricted
from kascade.operator.settings import OperatorSettings

COMPONENT_DISTILLATION = "distillation"
DISTILLATION_LABEL = "kascade.dev/distillation"
CLAIMS_ROOT = "/mnt/kascade"  # each claim a run uses is mounted once, at CLAIMS_ROOT/<claim>
JOB_BACKOFF_LIMIT = 2  # a pod lost mid-run is retried; `kascade distill` resumes from its checkpoint
# The Job's deadline (the API has no field for it): a pod's setup, once per attempt
# (pull the image, download the student and the log, load them, measure the held-out
# examples before and after, save), plus a budget per trained example (a LoRA step
# of a 7B student on one GPU takes seconds for 8 examples; on-policy steps also
# sample and wait for the teacher). Generous: it is there to stop a hung run from
# holding a GPU for good, not to time a slow one out.
RUN_SETUP_SECONDS = 3600
SECONDS_PER_TRAINED_EXAMPLE = 10


def distiller_name(cascade: str) -> str:
    """The ServiceAccount, Role and RoleBinding of a cascade's runs: `{cascade}-distill`."""
    return child_name(cascade, "distill")


def student_tier(cascade: ModelCascade) -> str:
    policy = cascade.spec.distillation
    return policy.tier if policy is not None and policy.tier else cascade.spec.tiers[0].name


def build_distillation(
    cascade: ModelCascade, settings: OperatorSettings, *, name: str, log_records: int
) -> dict[str, Any]:
    """The Distillation a cascade's schedule creates (owner references are added by the caller)."""
    policy, log = cascade.spec.distillation, cascade.spec.escalation_log
    assert policy is not None and log is not None and log.uri, "the API refuses distillation without the log"
    tier_name = student_tier(cascade)
    tier = next(t for t in cascade.spec.tiers if t.name == tier_name)
    teacher = cascade.spec.tiers[-1]
    on_policy = policy.training.on_policy_fraction > 0
    spec = DistillationSpec(
        cascade=cascade.metadata.name,
        tier=tier_name,
        student=tier.model.uri,
        data=log.uri,
        hub_token_secret=tier.model.hub_token_secret,
        credentials_secret=log.credentials_secret,
        output=f"{policy.output_uri.rstrip('/')}/{name}",
        teacher_url=tier_service_url(cascade, teacher, settings) if on_policy else None,
        teacher_model=teacher.served_name if on_policy else None,
        training=policy.training,
        gate=policy.gate,
        matcher=cascade.spec.matcher,
        **_judging(cascade, settings),
        **_pre_route_refit(cascade, tier),
        resources=policy.resources,
        tolerations=policy.tolerations,
        node_selector=policy.node_selector,
        log_records=log_records,
    )
    return {
        "apiVersion": API_VERSION,
        "kind": DISTILLATION_KIND,
        "metadata": {
            "name": name,
            "namespace": cascade_namespace(cascade),
            "labels": common_labels(cascade.metadata.name, COMPONENT_DISTILLATION),
        },
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def _judging(cascade: ModelCascade, settings: OperatorSettings) -> dict[str, Any]:
    """How the run's gate judges held-out answers: the semantic cutoff, and for matcher judge the LLM to ask (the
    cascade's judge.url, else its last tier's Service, with the served name)."""
    calibration = cascade.spec.calibration
    judge = calibration.judge if calibration is not None else Judge()
    fields: dict[str, Any] = {"semantic_cutoff": calibration.semantic_cutoff if calibration else SEMANTIC_CUTOFF}
    if cascade.spec.matcher is AnswerMatcher.judge:
        last = cascade.spec.tiers[-1]
        asked = (
            judge
            if judge.external
            else judge.model_copy(update={"url": tier_service_url(cascade, last, settings), "model": last.served_name})
        )
        fields["judge"] = asked
    return fields


def _pre_route_refit(cascade: ModelCascade, tier: Tier) -> dict[str, Any]:
    """A student tier with a preRoute gets it refitted by the run, for the same goal and dimensions."""
    if tier.pre_route is None:
        return {}
    calibration = cascade.spec.calibration
    goal = {"pre_route_dimensions": tier.pre_route.dimensions, "max_kept_skipped": tier.pre_route.max_kept_skipped}
    return goal | ({"confidence": calibration.confidence} if calibration is not None else {})


class _Claims:
    """The claims a run's pod mounts, each once; read-only unless the run writes to it."""

    def __init__(self, writable: str) -> None:
        self.writable = writable
        self.names: list[str] = []

    def path(self, uri: str) -> str:
        """Where `uri` is inside the pod: a pvc:// folder as mounted; anything else as it is."""
        location = ModelUri.parse(uri)
        if location.scheme != "pvc" or not location.pvc_claim:
            return uri
        if location.pvc_claim not in self.names:
            self.names.append(location.pvc_claim)
        return posixpath.join(CLAIMS_ROOT, location.pvc_claim, location.pvc_path or "").rstrip("/")

    def volumes(self) -> list[dict[str, Any]]:
        return [
            {"name": f"claim-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": claim != self.writable}}
            for i, claim in enumerate(self.names)
        ]

    def mounts(self) -> list[dict[str, Any]]:
        return [
            {"name": f"claim-{i}", "mountPath": posixpath.join(CLAIMS_ROOT, claim), "readOnly": claim != self.writable}
            for i, claim in enumerate(self.names)
        ]


def run_settings(run: Distillation, claims: _Claims) -> DistillSettings:
    """What the run's pod trains with: its spec, paths as the pod sees them (validated by the pod's own model)."""
    spec = run.spec
    teacher = spec.teacher_url is not None and spec.teacher_model is not None
    return DistillSettings(
        student=claims.path(spec.student),
        data=claims.path(spec.data),
        out=claims.path(spec.output),
        teacher_url=spec.teacher_url if teacher else None,
        teacher_model=spec.teacher_model if teacher else None,
        training=spec.training,
        gate=spec.gate,
        matcher=spec.matcher,
        semantic_cutoff=spec.semantic_cutoff,
        judge_url=spec.judge.url if spec.judge is not None else None,
        judge_model=spec.judge.model if spec.judge is not None else None,
        judge_min_probability=spec.judge.min_probability if spec.judge is not None else 0.5,
        judge_concurrency=spec.judge.concurrency if spec.judge is not None else 4,
        pre_route_tier=spec.tier if spec.pre_route_dimensions is not None else None,
        pre_route_dimensions=spec.pre_route_dimensions,
        max_kept_skipped=spec.max_kept_skipped,
        confidence=spec.confidence,
    )


def distill_args(run: Distillation, claims: _Claims) -> list[str]:
    """`kascade distill`'s command line for a run: its settings as one JSON argument, and where it reports."""
    namespace = run.metadata.namespace or "default"
    settings = run_settings(run, claims).model_dump_json(exclude_none=True)
    return [
        "kascade",
        "distill",
        "--settings",
        settings,
        "--report-to",
        f"{namespace}/{run.metadata.name}",
        "--model-uri",
        run.spec.output,
    ]


def job_deadline_seconds(spec: DistillationSpec) -> int:
    """`activeDeadlineSeconds` of a run's Job: (backoffLimit + 1) x RUN_SETUP_SECONDS
    + steps x batchSize x SECONDS_PER_TRAINED_EXAMPLE (200 steps of 8: 7 h 26 min 40 s)."""
    attempts = JOB_BACKOFF_LIMIT + 1
    return attempts * RUN_SETUP_SECONDS + spec.training.steps * spec.training.batch_size * SECONDS_PER_TRAINED_EXAMPLE


def build_distillation_job(run: Distillation, settings: OperatorSettings) -> dict[str, Any]:
    """The Job of a run (owner reference to the run added by the caller): one pod, retried from its checkpoint."""
    spec, name = run.spec, run.metadata.name
    claims = _Claims(writable=ModelUri.parse(spec.output).pvc_claim or "")
    args = distill_args(run, claims)
    labels = {**common_labels(spec.cascade, COMPONENT_DISTILLATION), DISTILLATION_LABEL: label_value(name)}
    container: dict[str, Any] = {
        "name": "distill",
        "image": settings.runtime_gpu_image if spec.resources.gpus > 0 else settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": args[:1],
        "args": args[1:],
        "env": [{"name": "HF_HOME", "value": "/tmp/huggingface"}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": tier_resources(spec),
        "volumeMounts": claims.mounts(),
    }
    if spec.hub_token_secret is not None:
        secret = {"name": spec.hub_token_secret.name, "key": spec.hub_token_secret.key}
        container["env"].append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": secret}})
    if spec.judge is not None and spec.judge.api_key_secret is not None:
        secret = {"name": spec.judge.api_key_secret.name, "key": spec.judge.api_key_secret.key}
        container["env"].append({"name": JUDGE_API_KEY_ENV, "valueFrom": {"secretKeyRef": secret}})
    if spec.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.credentials_secret}}]
    pod: dict[str, Any] = {
        "serviceAccountName": distiller_name(spec.cascade),
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": claims.volumes(),
    }
    if selector := tier_node_selector(spec, settings):
        pod["nodeSelector"] = selector
    if tolerations := tier_tolerations(spec, settings):
        pod["tolerations"] = tolerations
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": run.metadata.namespace, "labels": labels},
        "spec": {
            "backoffLimit": JOB_BACKOFF_LIMIT,
            "activeDeadlineSeconds": job_deadline_seconds(spec),
            "podFailurePolicy": {
                "rules": [
                    # A refusal fails the same way again: no retry.
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": "distill", "operator": "In", "values": [REFUSED_EXIT_CODE]},
                    },
                    # A pod evicted by a node drain, a preemption or the taint manager says nothing
                    # about the run: retry it (from its checkpoint) without using up backoffLimit.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]
            },
            # Restricted; the fsGroup lets the run's UID write the students' claim.
            "template": {"metadata": {"labels": labels}, "spec": restricted(pod, settings)},
        },
    }


def _metadata(cascade: ModelCascade) -> dict[str, Any]:
    return {
        "name": distiller_name(cascade.metadata.name),
        "namespace": cascade_namespace(cascade),
        "labels": common_labels(cascade.metadata.name, COMPONENT_DISTILLATION),
    }


def build_distiller_children(cascade: ModelCascade) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding `{cascade}-distill`; none without `spec.distillation`."""
    if cascade.spec.distillation is None:
        return []
    name = distiller_name(cascade.metadata.name)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(cascade),
        "rules": [{"apiGroups": [GROUP], "resources": [f"{DISTILLATION_PLURAL}/status"], "verbs": ["get", "patch"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(cascade),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": cascade_namespace(cascade)}],
    }
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(cascade)}
    return [with_spec_hash(account), with_spec_hash(role), with_spec_hash(binding)]
