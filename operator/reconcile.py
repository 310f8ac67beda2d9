"""One reconcile of one ModelCascade: observe, decide, apply, write the status. Idempotent.

1. parse the resource (a validation error: conditions Ready=False and
   Degraded=True with reason InvalidSpec, then `kopf.PermanentError`);
2. the distillation runs (`distillation_loop.reconcile_distillations`): read
   the runs naming the cascade and the Jobs of those it follows, plan
   (`run_plan.plan_distillation`: Jobs, failed runs, withdrawn promotions,
   decisions, old runs deleted, the next run) and apply the plan. It gives
   the cascade as served (a promoted student tier serves its run's model; the
   spec is never written), which every later step builds from, and
   `status.distillation`;
3. observe (`observe.observe`): the cascade's children, the Secrets it
   references, the GPU products nodes offer, the access modes of the claims
   its pods share; a running operator reads the children from its watches
   (`watch_cache`), so that a drift reconcile in steady state makes no request;
4. build the desired children (`builders.build_children`; an autoscaled
   tier's ScaledObject where the cluster serves KEDA, else its HPA:
   `autoscaling_apis`), add owner references, and plan (`plan.plan_children`:
   spec hashes decide);
5. when the spec is semantically wrong (a missing Secret, a name taken by
   someone else) apply NOTHING and say so in the Degraded condition; otherwise
   create, replace and delete (`apply.apply_plan`). A GPU type no node offers
   yet is a wait, not a fault: the children are applied, their pods go Pending
   (what a node pool that scales from zero needs to add a node), and
   TiersReady says what the tier waits for; the node's arrival makes the
   cascade Ready with no edit. A ReadWriteOnce claim shared by pods that may
   run on several nodes is a warning (Degraded, ClaimNotShared), not a stop;
6. write the status (`status_patch.compose_status`, with `status.distillation`)
   as one merge patch on the status subresource, only when it differs from
   what is there, with the observed resourceVersion as a precondition so that
   stale data never lowers a figure or retires a slot. Its times are
   `Operator.now` formatted once (`kascade.api.times.format_time`).

A reconcile that finds nothing to change makes no write at all. The Kopf
handlers (`handlers`) run it for create, update, resume and the drift loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn

import kopf
from pydantic import ValidationError

from kascade.api.modelcascade import ModelCascade
from kascade.api.times import format_time, utc_now
from kascade.operator.apply import apply_plan
from kascade.operator.autoscaling_apis import AutoscalingApis
from kascade.operator.builders import Autoscaler, build_children
from kascade.operator.cascade_resource import parse_cascade, validation_message
from kascade.operator.cascade_writes import Target, post, write_status
from kascade.operator.counters import REPLICA_COUNTERS, FoldResult
from kascade.operator.distillation_loop import reconcile_distillations
from kascade.operator.drift import mark_edited
from kascade.operator.kube_api import KubeApi
from kascade.operator.labels import label_value
from kascade.operator.notices import Notice
from kascade.operator.observe import FoundByName, GpuProducts, find_taken_names, live_router_pods, observe
from kascade.operator.plan import ChildKey, plan_children
from kascade.operator.problems import Problem, ProblemReason, check_semantics, conflict_problems
from kascade.operator.settings import OperatorSettings
from kascade.operator.status_patch import compose_status, invalid_status
from kascade.operator.watch_cache import WatchCache

log = logging.getLogger("kascade.operator")

__all__ = ["Operator", "Target", "post", "reconcile", "write_status"]


@dataclass
class Operator:
    """What every reconcile needs; made once at startup and kept in kopf's memo."""

    api: KubeApi
    settings: OperatorSettings
    gpu_products: GpuProducts = field(default_factory=GpuProducts)
    cache: WatchCache | None = None  # the children and router pods from watches; None: list them each time
    by_name: FoundByName = field(default_factory=FoundByName)  # Secrets' keys and claims' modes, found by name
    reconciles: int = 0  # reconciles begun, shown by the liveness endpoint
    autoscaling_apis: AutoscalingApis = field(default_factory=AutoscalingApis)  # KEDA? external metrics?
    now: Callable[[], datetime] = utc_now  # the time of a reconcile: status times, the distillation schedule


async def reconcile(operator: Operator, body: Any, logger: kopf.Logger) -> None:
    """Bring the children and the status of one ModelCascade to what its spec asks. Idempotent."""
    operator.reconciles += 1
    target = Target.of(body)
    try:
        cascade = parse_cascade(body)
    except ValidationError as error:
        await _report_invalid(operator, target, validation_message(error))
    # From here on, the cascade as served: a promoted student tier's model comes from its run's status, the spec is
    # never written (a GitOps re-apply of the manifest neither conflicts with nor undoes a promotion).
    cascade, distillation = await reconcile_distillations(operator, cascade, target)
    served = await operator.autoscaling_apis.get(operator.api)
    observation = await observe(
        operator.api,
        cascade,
        operator.gpu_products,
        cache=operator.cache,
        by_name=operator.by_name,
        kinds=served.child_kinds,
    )
    problems = check_semantics(
        cascade, secrets=observation.secrets, gpu_products=observation.gpu_products, claim_modes=observation.claim_modes
    )
    observed = observation.children
    if not any(problem.blocking for problem in problems):
        waits = problems
        observed, problems = await _apply(
            operator, cascade, target, observed, logger, served.autoscaler(operator.settings)
        )
        problems += waits
    await _write_health(operator, cascade, target, observed, problems, logger, extra=distillation)
    failed = next((p for p in problems if p.reason == ProblemReason.apply_failed), None)
    if failed is not None:
        raise kopf.TemporaryError(failed.message, delay=10)


async def _report_invalid(operator: Operator, target: Target, message: str) -> NoReturn:
    """Conditions InvalidSpec, then `kopf.PermanentError`: nothing to do until the spec changes."""

    async def compose(current: Mapping[str, Any]) -> dict[str, Any]:
        now = format_time(operator.now())
        return invalid_status(current, message=message, now=now, generation=target.generation)

    await write_status(operator.api, target, compose)
    raise kopf.PermanentError(message)


async def _apply(
    operator: Operator,
    cascade: ModelCascade,
    target: Target,
    observed: dict[ChildKey, dict[str, Any]],
    logger: kopf.Logger,
    autoscaler: Autoscaler,
) -> tuple[dict[ChildKey, dict[str, Any]], list[Problem]]:
    """Plan and apply the children (`autoscaler`: what scales an autoscaled tier); (what was observed, taken names
    included; the problems found)."""
    desired = build_children(cascade, operator.settings, autoscaler=autoscaler)
    kopf.append_owner_reference(
        desired, owner=target.body
    )  # controller, blockOwnerDeletion: deleting the cascade removes them
    observed = {**observed, **await find_taken_names(operator.api, desired, observed, target.namespace)}
    plan = plan_children(desired, mark_edited(desired, observed), cascade=label_value(target.name))
    problems = conflict_problems(plan, target.namespace)
    if problems or plan.empty:
        return observed, problems
    logger.info("applying: %s", plan.summary())
    report = await apply_plan(operator.api, plan, observed, namespace=target.namespace)
    if report.wrote:
        post(target.body, Notice("Normal", "Applied", report.summary()))
    if report.failures:
        return observed, [Problem(ProblemReason.apply_failed, "; ".join(report.failures))]
    if report.stale:
        raise kopf.TemporaryError(f"children changed while applying ({report.summary()} done); again", delay=1)
    return observed, []


async def _write_health(
    operator: Operator,
    cascade: ModelCascade,
    target: Target,
    observed: Mapping[ChildKey, Mapping[str, Any]],
    problems: list[Problem],
    logger: kopf.Logger,
    *,
    extra: Mapping[str, Any],
) -> None:
    """Write the status (readiness, conditions, folded counters; `extra`: status.distillation) when it changed,
    and log what the fold did: one write."""
    live_pods: list[str] | None = None
    folds: list[FoldResult] = []

    async def compose(current: Mapping[str, Any]) -> dict[str, Any]:
        nonlocal live_pods
        if current.get(REPLICA_COUNTERS) and live_pods is None:
            live_pods = await live_router_pods(operator.api, cascade, operator.cache)
        patch, fold = compose_status(
            cascade,
            operator.settings,
            current,
            observed,
            problems=problems,
            live_pods=live_pods or [],
            now=format_time(operator.now()),
            generation=target.generation,
        )
        folds.append(fold)
        return {**patch, **extra}

    written = await write_status(operator.api, target, compose)
    fold = folds[-1]
    for line in (*fold.guarded, *fold.warnings):
        log.warning("%s/%s: %s", target.namespace, target.name, line)
    if written is not None:
        if faults := [p for p in problems if p.degrades]:
            logger.info("degraded: %s", "; ".join(p.message for p in faults))
        if fold.retired:
            logger.info("retired the counter slots of gone router processes: %s", ", ".join(fold.retired))
