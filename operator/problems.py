"""What is wrong with a cascade, or what it waits for: one reason enum, one `Problem` type. Pure.

A blocking problem (a fault the user must fix) makes the cascade `Degraded`
(its reason is the condition's reason) and stops the apply; the message says
what to do. A wait (`Problem.blocking` False: no node offers a tier's GPU type
yet) is not a fault: the children are applied, and the tier's pods stay
Pending, which is what a node pool that scales from zero needs to add a node;
the wait only says, in `TiersReady` and `Ready`, why the tier does not serve.
A warning (a ReadWriteOnce claim that pods on several nodes share; pods the
cluster refuses to create) degrades the cascade and stops nothing: the claim
works on a single-node cluster, and refused pods are the cluster's answer to
what was applied (the Deployment's `ReplicaFailure` condition says why).

`check_semantics(cascade, secrets=..., gpu_products=..., claim_modes=...)`
finds what the CRD schema cannot see; the handler gathers the Secret names,
the nodes' `nvidia.com/gpu.product` values and the claims' access modes
(`observe`), and this module only compares.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from kascade.api.model_uri import ModelUri
from kascade.api.modelcascade import EngineKind, ModelCascade, Tier, currency_conflict
from kascade.operator.build_tier import GPU_PRODUCT_LABEL, cascade_namespace, deploys_pods
from kascade.operator.builders import name_collisions
from kascade.operator.cluster_needs import secret_refs
from kascade.operator.plan import Plan


class ProblemReason(StrEnum):
    """The reasons a cascade is Degraded because of a problem (the condition's `reason`)."""

    invalid_spec = "InvalidSpec"  # the spec does not parse, or makes no sense (check_semantics)
    missing_secret = "MissingSecret"  # a referenced Secret or key does not exist
    name_conflict = "NameConflict"  # a child's name is held by an object the cascade does not own
    apply_failed = "ApplyFailed"  # the API server refused a write (retried)
    waiting_for_gpu_nodes = "WaitingForGpuNodes"  # a wait, not a fault: no node offers the tier's gpuType yet
    claim_not_shared = "ClaimNotShared"  # a warning: pods that may run on several nodes share a ReadWriteOnce claim
    pods_refused = "PodsRefused"  # a child Deployment cannot create its pods (Pod Security, a quota, a webhook)


# Reasons that explain why a tier waits; they neither stop the apply nor degrade the cascade.
WAITS = frozenset({ProblemReason.waiting_for_gpu_nodes})
# Reasons that degrade the cascade but do not stop the apply: it works on some clusters (one node).
WARNINGS = frozenset({ProblemReason.claim_not_shared, ProblemReason.pods_refused})


@dataclass(frozen=True)
class Problem:
    """Something wrong that the user must fix (it makes the cascade `Degraded`), or a tier's wait.

    `tier`: the tier a wait is about (its `TiersReady` phrase carries the message).
    """

    reason: ProblemReason
    message: str
    tier: str | None = None

    @property
    def blocking(self) -> bool:
        """Whether it stops the apply: every reason but a wait or a warning."""
        return self.reason not in WAITS and self.reason not in WARNINGS

    @property
    def degrades(self) -> bool:
        """Whether it makes the cascade Degraded: every reason but a wait."""
        return self.reason not in WAITS


def conflict_problems(plan: Plan, namespace: str) -> list[Problem]:
    """One NameConflict per child name that someone else's object holds."""
    return [
        Problem(
            ProblemReason.name_conflict,
            f'{kind} "{name}" already exists in namespace "{namespace}" and is not managed by this cascade; '
            "delete or rename it, or rename the cascade",
        )
        for kind, name in plan.conflicts
    ]


# Flags the operator sets itself; engineArgs repeating them would break the Service or the config.
_RESERVED_ENGINE_FLAGS = ("--model", "--port", "--host", "--served-model-name")
# Schemes each engine loads (`ModelUri.scheme`); plain paths and file:// always work. "file" is listed for messages.
_KNOWN_SCHEMES = {
    EngineKind.vllm: ("hf", "pvc", "s3", "file"),
    EngineKind.transformers: ("hf", "pvc", "pkg", "file"),
}


# --- Semantic checks ----------------------------------------------------------------


def _secret_problems(cascade: ModelCascade, secrets: Collection[str] | Mapping[str, Collection[str]]) -> list[Problem]:
    namespace = cascade_namespace(cascade)
    problems = []
    for where, ref in secret_refs(cascade):
        if ref.name not in secrets:
            problems.append(
                Problem(
                    ProblemReason.missing_secret,
                    f'Secret "{ref.name}" used by {where} does not exist in namespace "{namespace}"; '
                    f"create it: kubectl -n {namespace} create secret generic {ref.name} "
                    f"--from-literal={ref.key}=...",
                )
            )
        elif isinstance(secrets, Mapping) and ref.key not in secrets[ref.name]:
            problems.append(
                Problem(
                    ProblemReason.missing_secret,
                    f'Secret "{ref.name}" used by {where} has no key "{ref.key}" '
                    f"(it has: {', '.join(sorted(secrets[ref.name])) or 'none'})",
                )
            )
    return problems


def _gpu_node_waits(cascade: ModelCascade, gpu_products: Collection[str]) -> list[Problem]:
    """A wait per tier whose gpuType no node offers yet: its pods go Pending, which is how a pool that
    scales from zero (cluster-autoscaler, Karpenter, node auto-provisioning) learns to add a node."""
    waits = []
    for tier in cascade.spec.tiers:
        wanted = tier.resources.gpu_type
        if not deploys_pods(tier) or tier.resources.gpus == 0 or not wanted or wanted in gpu_products:
            continue
        if tier.node_selector.get(GPU_PRODUCT_LABEL, wanted) != wanted:
            continue  # the tier's own nodeSelector overrides gpuType; nothing to compare
        offered = ", ".join(sorted(gpu_products))
        hint = (
            f"nodes offer: {offered}"
            if offered
            else f"no node carries the {GPU_PRODUCT_LABEL} label (is NVIDIA GPU feature discovery installed? "
            "Without it, leave gpuType out and set the tier's nodeSelector to the GPU label your nodes carry)"
        )
        waits.append(
            Problem(
                ProblemReason.waiting_for_gpu_nodes,
                f"its pods wait for a node with {GPU_PRODUCT_LABEL}={wanted} (resources.gpuType) and no node "
                f"offers it yet; {hint}. A node pool that scales from zero adds one for the Pending pods; "
                "if none will come, fix gpuType or add such nodes.",
                tier=tier.name,
            )
        )
    return waits


def _model_uri_problems(tier: Tier) -> list[str]:
    where = f'tier "{tier.name}"'
    location = tier.model.location
    if not location.is_path and location.scheme not in _KNOWN_SCHEMES[tier.engine]:
        if location.scheme == "pkg":
            return [
                f"{where}: pkg:// models are packaged for Kascade's own server; use engine transformers, "
                "or hf://, pvc:// or s3:// with engine vllm"
            ]
        if location.scheme == "s3":
            return [f"{where}: engine transformers cannot read s3://; use engine vllm or a pvc:// model"]
        allowed = ", ".join(f"{s}://" for s in _KNOWN_SCHEMES[tier.engine])
        return [f"{where}: model.uri scheme {location.scheme}:// is not supported; use {allowed} or a path"]
    if location.scheme == "pvc" and not location.pvc_claim:
        return [f"{where}: model.uri {tier.model.uri} names no claim; write pvc://CLAIM/path"]
    return []


def _tier_problems(tier: Tier) -> list[str]:
    where = f'tier "{tier.name}"'
    messages = []
    if tier.resources.gpu_type and tier.resources.gpus == 0:
        messages.append(f"{where}: resources.gpuType is set but resources.gpus is 0; set gpus or remove gpuType")
    messages += _model_uri_problems(tier)
    reserved = sorted(
        {
            flag
            for arg in tier.engine_args
            for flag in _RESERVED_ENGINE_FLAGS
            if arg == flag or arg.startswith(f"{flag}=")
        }
    )
    if reserved:
        messages.append(
            f"{where}: engineArgs must not set {', '.join(reserved)}; the operator sets them "
            "(use model.uri and model.servedName)"
        )
    return messages


def _spec_problems(cascade: ModelCascade) -> list[Problem]:
    messages: list[str] = list(name_collisions(cascade))
    prices = {tier.name: tier.price for tier in cascade.spec.tiers}
    judge = cascade.spec.calibration.judge if cascade.spec.calibration is not None else None
    if judge is not None and judge.price is not None:  # judge calls are added to the tiers' cost
        prices["calibration.judge"] = judge.price
    conflict = currency_conflict(prices)
    if conflict is not None:
        messages.append(conflict)
    for tier in cascade.spec.tiers:
        if deploys_pods(tier):
            messages += _tier_problems(tier)
    messages += _escalation_log_problems(cascade)
    return [Problem(ProblemReason.invalid_spec, message) for message in messages]


def _escalation_log_problems(cascade: ModelCascade) -> list[str]:
    """A router pod's own disk is gone with the pod: in a cluster the log goes to a claim or to S3."""
    log = cascade.spec.escalation_log
    if log is None or not log.enabled or not log.uri:
        return []
    location = ModelUri.parse(log.uri)
    if location.scheme == "pvc" and not location.pvc_claim:
        return [f"spec.escalationLog.uri {log.uri} names no claim; write pvc://CLAIM/path"]
    if location.scheme not in ("pvc", "s3"):
        return [
            f"spec.escalationLog.uri {log.uri}: in a cluster the log goes to pvc://claim/path or s3://bucket/prefix"
        ]
    return []


# Access modes that let pods on different nodes mount a claim at once (ReadOnlyMany would refuse the writer).
_SHARED_MODES = frozenset({"ReadWriteMany"})


def shared_claims(cascade: ModelCascade) -> dict[str, list[str]]:
    """The claims that pods which may land on different nodes use together: claim -> who uses it (for messages).

    The escalation log's claim: written by every router replica, read by the distillation runs' Jobs. The
    students' claim: written by a run's Job, read by the student tier's replicas.
    """
    users: dict[str, list[str]] = {}
    log = cascade.spec.escalation_log
    distils = cascade.spec.distillation is not None
    if log is not None and log.enabled and log.uri and (claim := ModelUri.parse(log.uri).pvc_claim):
        routers = cascade.spec.router.replicas
        if routers > 1 or distils:
            users.setdefault(claim, []).append(
                f"the escalation log, written by {routers} router replica{'s' if routers != 1 else ''}"
                + (" and read by the distillation runs" if distils else "")
            )
    if cascade.spec.distillation is not None and (
        claim := ModelUri.parse(cascade.spec.distillation.output_uri).pvc_claim
    ):
        users.setdefault(claim, []).append("the students, written by the distillation runs and served by the tier")
    return users


def _claim_warnings(cascade: ModelCascade, claim_modes: Mapping[str, Collection[str]]) -> list[Problem]:
    warnings = []
    for claim, users in shared_claims(cascade).items():
        modes = claim_modes.get(claim)
        if modes is None or _SHARED_MODES & set(modes):
            continue  # not found or not readable: nothing to compare
        warnings.append(
            Problem(
                ProblemReason.claim_not_shared,
                f'PersistentVolumeClaim "{claim}" ({"; ".join(users)}) is {", ".join(sorted(modes)) or "of no access mode"}: '
                "pods on different nodes cannot mount it at once (Multi-Attach error, the pod waits in "
                "ContainerCreating); use a ReadWriteMany claim (NFS, CephFS, EFS, Filestore, Azure Files). "
                "On a single-node cluster it works as it is.",
            )
        )
    return warnings


def check_semantics(
    cascade: ModelCascade,
    *,
    secrets: Collection[str] | Mapping[str, Collection[str]],
    gpu_products: Collection[str] | None,
    claim_modes: Mapping[str, Collection[str]] | None = None,
) -> list[Problem]:
    """Problems the schema cannot catch: InvalidSpec, MissingSecret, ClaimNotShared, then WaitingForGpuNodes.

    `secrets`: the names of the Secrets in the cascade's namespace, or a
    mapping of name to its keys (then missing keys are reported too).
    `gpu_products`: the values of the `nvidia.com/gpu.product` label over the
    cluster's nodes; None when the handler could not list nodes (the check is skipped).
    `claim_modes`: the access modes of the claims `shared_claims` names, by
    claim (a claim missing or unreadable is left out), then ClaimNotShared warns.
    The GPU waits and the claim warnings are not blocking (`Problem.blocking`):
    the children are applied all the same, and a tier that does not serve says
    what it waits for.
    """
    problems = _spec_problems(cascade) + _secret_problems(cascade, secrets)
    if claim_modes:
        problems += _claim_warnings(cascade, claim_modes)
    if gpu_products is not None:
        problems += _gpu_node_waits(cascade, gpu_products)
    return problems
