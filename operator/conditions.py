"""Readiness and conditions of a ModelCascade, from its spec and its observed children. Pure.

- `check_semantics(cascade, secrets=..., gpu_products=...)`: what the CRD
  schema cannot see (a missing Secret, a model URI an engine cannot load) as a
  list of `Problem`s, and the tiers that wait for a GPU type no node offers
  yet (not blocking: their pods go Pending). The handler gathers the Secret
  names and the nodes' `nvidia.com/gpu.product` values; this function only
  compares.
- `compute_health(cascade, observed, previous=..., problems=..., now=...)`:
  per-tier `TierStatus` and the conditions `Ready`, `TiersReady`,
  `RouterReady`, `Degraded`. A condition whose status does not change keeps
  its `lastTransitionTime`; conditions of other types (e.g. `Calibrated`) are
  kept as they are.
- `invalid_spec_conditions(...)`: the conditions to write when the resource
  does not even parse (the handler then raises `kopf.PermanentError`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kascade.api.modelcascade import Condition, EngineKind, ModelCascade, Tier, TierStatus, currency_conflict
from kascade.api.summary import tier_is_ready
from kascade.operator.build_tier import (
    GPU_PRODUCT_LABEL,
    cascade_namespace,
    deploys_pods,
)
from kascade.operator.builders import name_collisions
from kascade.api.model_uri import ModelUri
from kascade.operator.cluster_needs import secret_refs
from kascade.operator.labels import router_child_name, tier_child_name
from kascade.operator.plan import ChildKey
from kascade.operator.problems import Problem, ProblemReason

__all__ = [
    "DEGRADED",
    "OWN_CONDITIONS",
    "READY",
    "ROUTER_READY",
    "TIERS_READY",
    "Health",
    "Problem",
    "ProblemReason",
    "check_semantics",
    "compute_health",
    "invalid_spec_conditions",
    "merge_conditions",
    "tier_statuses",
]

READY = "Ready"
TIERS_READY = "TiersReady"
ROUTER_READY = "RouterReady"
DEGRADED = "Degraded"
OWN_CONDITIONS = (READY, TIERS_READY, ROUTER_READY, DEGRADED)

# Flags the operator sets itself; engineArgs repeating them would break the Service or the config.
_RESERVED_ENGINE_FLAGS = ("--model", "--port", "--host", "--served-model-name")
# Schemes each engine loads (`ModelUri.scheme`); plain paths and file:// always work. "file" is listed for messages.
_KNOWN_SCHEMES = {
    EngineKind.vllm: ("hf", "pvc", "s3", "file"),
    EngineKind.transformers: ("hf", "pvc", "pkg", "file"),
}


@dataclass(frozen=True)
class Health:
    """What `compute_health` found: `status.tiers` and `status.conditions`."""

    tiers: list[TierStatus]
    conditions: list[Condition]

    @property
    def ready(self) -> bool:
        return any(c.type == READY and c.status == "True" for c in self.conditions)

    def status_fields(self) -> dict[str, Any]:
        """`{"tiers": [...], "conditions": [...]}` as JSON for a status merge patch (camelCase)."""
        return {
            "tiers": [tier.model_dump(mode="json", by_alias=True, exclude_none=True) for tier in self.tiers],
            "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in self.conditions],
        }


# --- Semantic checks ----------------------------------------------------------------


def _secret_problems(
    cascade: ModelCascade, secrets: Collection[str] | Mapping[str, Collection[str]]
) -> list[Problem]:
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
        {flag for arg in tier.engine_args for flag in _RESERVED_ENGINE_FLAGS if arg == flag or arg.startswith(f"{flag}=")}
    )
    if reserved:
        messages.append(
            f"{where}: engineArgs must not set {', '.join(reserved)}; the operator sets them "
            "(use model.uri and model.servedName)"
        )
    return messages


def _spec_problems(cascade: ModelCascade) -> list[Problem]:
    messages: list[str] = list(name_collisions(cascade))
    conflict = currency_conflict({tier.name: tier.price for tier in cascade.spec.tiers})
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
        return [f"spec.escalationLog.uri {log.uri}: in a cluster the log goes to pvc://claim/path or s3://bucket/prefix"]
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
    if cascade.spec.distillation is not None and (claim := ModelUri.parse(cascade.spec.distillation.output_uri).pvc_claim):
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


# --- Readiness ----------------------------------------------------------------------


def _ready_replicas(observed: Mapping[ChildKey, Mapping[str, Any]], name: str) -> int:
    deployment = observed.get(("Deployment", name)) or {}
    value = (deployment.get("status") or {}).get("readyReplicas") or 0
    return value if isinstance(value, int) and value > 0 else 0


def tier_statuses(cascade: ModelCascade, observed: Mapping[ChildKey, Mapping[str, Any]]) -> list[TierStatus]:
    """One `TierStatus` per tier, in spec order: ready/desired replicas of its Deployment; external tiers ready.

    `threshold` is the declared accept threshold (calibration may later report another).
    `readyGpus` (ready replicas x `resources.gpus`) and `perGpuHour` are what
    the GPU-hours are integrated from (`reservation.integrate_gpu_hours`).
    """
    result = []
    for tier in cascade.spec.tiers:
        threshold = tier.accept.threshold if tier.accept is not None else None
        price = tier.price.per_gpu_hour
        if not deploys_pods(tier):
            result.append(TierStatus(name=tier.name, ready=True, threshold=threshold, per_gpu_hour=price))
            continue
        ready = _ready_replicas(observed, tier_child_name(cascade.metadata.name, tier.name))
        result.append(TierStatus(name=tier.name, ready_replicas=ready, replicas=tier.replicas, threshold=threshold,
                                 ready_gpus=ready * tier.resources.gpus, per_gpu_hour=price))  # fmt: skip
    return result


def _replicas_phrase(what: str, ready: int, desired: int) -> str:
    return f"{what} has {ready}/{desired} ready replicas"


def merge_conditions(
    previous: Iterable[Condition | Mapping[str, Any]], new: Iterable[Condition], *, now: str
) -> list[Condition]:
    """`new` conditions with `lastTransitionTime` kept from `previous` when the status did not change.

    Previous conditions of types not in `new` are kept after them, unchanged.
    """
    before = {c.type: c for c in (_as_condition(p) for p in previous)}
    merged = []
    for condition in new:
        old = before.pop(condition.type, None)
        kept = old.last_transition_time if old is not None and old.status == condition.status else None
        merged.append(condition.model_copy(update={"last_transition_time": kept or now}))
    return merged + list(before.values())


def _as_condition(value: Condition | Mapping[str, Any]) -> Condition:
    return value if isinstance(value, Condition) else Condition.model_validate(value)


def _condition(
    type_: str, ok: bool, reason: str, message: str, generation: int | None
) -> Condition:
    status: Literal["True", "False"] = "True" if ok else "False"
    return Condition(type=type_, status=status, reason=reason, message=message, observed_generation=generation)


def compute_health(
    cascade: ModelCascade,
    observed: Mapping[ChildKey, Mapping[str, Any]],
    *,
    previous: Iterable[Condition | Mapping[str, Any]] = (),
    problems: Sequence[Problem] = (),
    now: str,
    generation: int | None = None,
) -> Health:
    """Tier statuses and the Ready, TiersReady, RouterReady and Degraded conditions.

    `observed`: the cascade's children keyed by (kind, name) (`plan.index_children`);
    only the Deployments' `status.readyReplicas` is read. `previous`: the
    conditions now in the status. `problems`: `check_semantics(...)` plus
    anything else the handler found; the waits among them (`Problem.blocking`
    False) explain a tier that does not serve and degrade nothing. `now`: an RFC 3339 time (e.g.
    `2025-01-01T00:00:00Z`) used for conditions that change. `generation`:
    `metadata.generation`, written as each condition's `observedGeneration`.

    - TiersReady: every tier can serve (a ready replica; external tiers always).
      A tier that does not and has a wait says what it waits for (reason: the wait's,
      e.g. WaitingForGpuNodes).
    - RouterReady: the router has a ready replica.
    - Ready: both of the above.
    - Degraded: a problem that is not a wait was found (reason: the first one's), or a
      component serves with fewer ready replicas than desired (ReplicasUnavailable).
    """
    faults = [p for p in problems if p.degrades]
    waits = {p.tier: p for p in problems if not p.degrades and p.tier is not None}
    tiers = tier_statuses(cascade, observed)
    short = [
        _replicas_phrase(f'tier "{t.name}"', t.ready_replicas, t.replicas)
        for t in tiers
        if tier_is_ready(t) and t.ready is None and t.ready_replicas < t.replicas
    ]
    router_desired = cascade.spec.router.replicas
    router_ready = _ready_replicas(observed, router_child_name(cascade.metadata.name))
    if 0 < router_ready < router_desired:
        short.append(_replicas_phrase("the router", router_ready, router_desired))
    tiers_condition = _tiers_condition(tiers, waits, generation)
    router_condition = _router_condition(router_ready, router_desired, generation)
    conditions = [
        _ready_condition(tiers_condition, router_condition, faults, generation),
        tiers_condition,
        router_condition,
        _degraded_condition(faults, short, generation),
    ]
    return Health(tiers=tiers, conditions=merge_conditions(previous, conditions, now=now))


def _tiers_condition(tiers: Sequence[TierStatus], waits: Mapping[str, Problem], generation: int | None) -> Condition:
    """TiersReady; a tier that does not serve carries its wait's message, and the first wait gives the reason."""
    not_serving, reasons = [], []
    for tier in tiers:
        if tier_is_ready(tier):
            continue
        phrase = _replicas_phrase(f'tier "{tier.name}"', tier.ready_replicas, tier.replicas)
        wait = waits.get(tier.name)
        if wait is not None:
            phrase = f"{phrase}: {wait.message}"
            reasons.append(wait.reason)
        not_serving.append(phrase)
    if not_serving:
        reason = reasons[0] if reasons else "TiersNotReady"
        return _condition(TIERS_READY, False, reason, "; ".join(not_serving), generation)
    return _condition(TIERS_READY, True, "AllTiersReady", f"all {len(tiers)} tiers serve", generation)


def _router_condition(ready: int, desired: int, generation: int | None) -> Condition:
    phrase = _replicas_phrase("the router", ready, desired)
    if ready > 0:
        return _condition(ROUTER_READY, True, "RouterReady", phrase, generation)
    if desired == 0:
        message = "spec.router.replicas is 0: the cascade has no endpoint"
        return _condition(ROUTER_READY, False, "ScaledToZero", message, generation)
    return _condition(ROUTER_READY, False, "RouterNotReady", phrase, generation)


def _ready_condition(
    tiers: Condition, router: Condition, problems: Sequence[Problem], generation: int | None
) -> Condition:
    """Ready when tiers and router are; otherwise what they wait for, then the problems (reason: the first's)."""
    if tiers.status == "True" and router.status == "True":
        return _condition(READY, True, "Ready", "the cascade serves at its endpoint", generation)
    waiting = [c.message for c in (tiers, router) if c.status != "True"]
    if problems:
        reason = problems[0].reason
        waiting.append("; ".join(p.message for p in problems))
    else:
        reason = tiers.reason if tiers.status != "True" else router.reason
    return _condition(READY, False, reason, "; ".join(waiting), generation)


def _degraded_condition(problems: Sequence[Problem], short: Sequence[str], generation: int | None) -> Condition:
    if problems:
        return _condition(DEGRADED, True, problems[0].reason, "; ".join(p.message for p in problems), generation)
    if short:
        return _condition(DEGRADED, True, "ReplicasUnavailable", "; ".join(short), generation)
    return _condition(DEGRADED, False, "AsExpected", "no problems found", generation)


def invalid_spec_conditions(
    previous: Iterable[Condition | Mapping[str, Any]],
    *,
    message: str,
    now: str,
    generation: int | None = None,
) -> list[Condition]:
    """Conditions for a resource the operator cannot parse: Ready False and Degraded True, reason InvalidSpec.

    TiersReady and RouterReady are left as they were: the children keep running as last applied.
    """
    reason = ProblemReason.invalid_spec.value
    return merge_conditions(
        previous,
        [
            _condition(READY, False, reason, message, generation),
            _condition(DEGRADED, True, reason, message, generation),
        ],
        now=now,
    )
