"""Readiness and conditions of a ModelCascade, from its spec and its observed children. Pure.

- what the CRD schema cannot see (a missing Secret, a GPU type no node offers
  yet, a shared ReadWriteOnce claim) is found by `problems.check_semantics`;
  the problems come in here.
- `compute_health(cascade, observed, previous=..., problems=..., now=...)`:
  per-tier `TierStatus` and the conditions `Ready`, `TiersReady`,
  `RouterReady`, `Degraded`. A condition whose status does not change keeps
  its `lastTransitionTime`; conditions of other types (e.g. `Calibrated`) are
  kept as they are.
- `invalid_spec_conditions(...)`: the conditions to write when the resource
  does not even parse (the handler then raises `kopf.PermanentError`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kascade.api.modelcascade import Condition, ModelCascade, TierStatus
from kascade.api.summary import tier_is_ready
from kascade.operator.build_tier import deploys_pods
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


# --- Readiness ----------------------------------------------------------------------


def _ready_replicas(observed: Mapping[ChildKey, Mapping[str, Any]], name: str) -> int:
    deployment = observed.get(("Deployment", name)) or {}
    value = (deployment.get("status") or {}).get("readyReplicas") or 0
    return value if isinstance(value, int) and value > 0 else 0


def _autoscaled_replicas(observed: Mapping[ChildKey, Mapping[str, Any]], name: str) -> int:
    """The replicas an autoscaler asked of a Deployment (its live spec.replicas; 1, the API's default, if unset)."""
    deployment = observed.get(("Deployment", name))
    if deployment is None:
        return 1
    value = (deployment.get("spec") or {}).get("replicas", 1)
    return value if isinstance(value, int) and value >= 0 else 1


def tier_statuses(cascade: ModelCascade, observed: Mapping[ChildKey, Mapping[str, Any]]) -> list[TierStatus]:
    """One `TierStatus` per tier, in spec order: ready/desired replicas of its Deployment; external tiers ready.

    `threshold` is the declared accept threshold (calibration may later report another). An autoscaled
    tier's desired replicas are its autoscaler's (the Deployment's live `spec.replicas`); scaled to zero,
    it counts as serving (`ready`): the routers skip it, or wait for it when it is the last.
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
        name = tier_child_name(cascade.metadata.name, tier.name)
        ready = _ready_replicas(observed, name)
        desired = tier.replicas if tier.autoscaling is None else _autoscaled_replicas(observed, name)
        # A tier its autoscaler scaled to zero serves as designed: the routers skip it (or wait for it, the last).
        scaled_to_zero = tier.autoscaling is not None and tier.autoscaling.scales_to_zero and desired == 0
        result.append(
            TierStatus(
                name=tier.name,
                ready_replicas=ready,
                replicas=desired,
                ready=True if scaled_to_zero and ready == 0 else None,
                threshold=threshold,
                ready_gpus=ready * tier.resources.gpus,
                per_gpu_hour=price,
            )
        )
    return result


def refused_pods(cascade: ModelCascade, observed: Mapping[ChildKey, Mapping[str, Any]]) -> list[Problem]:
    """A Deployment whose ReplicaSet cannot create pods (its `ReplicaFailure` condition, reason FailedCreate):
    the namespace's Pod Security level, a ResourceQuota or an admission webhook said no. Without this the
    cascade would show only missing replicas."""
    names = [
        (f'tier "{t.name}"', tier_child_name(cascade.metadata.name, t.name))
        for t in cascade.spec.tiers
        if deploys_pods(t)
    ] + [("the router", router_child_name(cascade.metadata.name))]
    problems = []
    for what, name in names:
        conditions = ((observed.get(("Deployment", name)) or {}).get("status") or {}).get("conditions") or []
        failure = next((c for c in conditions if c.get("type") == "ReplicaFailure" and c.get("status") == "True"), None)
        if failure is not None:
            message = (
                f"{what} cannot create its pods ({failure.get('reason', 'FailedCreate')}): {failure.get('message', '')}"
            )
            problems.append(Problem(ProblemReason.pods_refused, message.rstrip(": ")))
    return problems


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


def _condition(type_: str, ok: bool, reason: str, message: str, generation: int | None) -> Condition:
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
    only the Deployments' `status.readyReplicas` and `ReplicaFailure` condition are read. `previous`: the
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
    - Degraded: a problem that is not a wait was found (reason: the first one's), a Deployment
      cannot create its pods (PodsRefused, with the cluster's message), or a component serves
      with fewer ready replicas than desired (ReplicasUnavailable).
    """
    faults = [p for p in problems if p.degrades] + refused_pods(cascade, observed)
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
    reason: str
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
