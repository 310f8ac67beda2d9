"""A cascade's distillation runs, each reconcile: observe (reads), plan (`run_plan`, pure), apply (writes). Idempotent.

Run before the children are built: what the student tier serves comes from the
runs' promotion records (`promotion.serving`), never from a write to the spec.
The plan says what to do and why (`run_plan`); this module reads what it needs
(the runs naming the cascade, the Jobs of those it follows) and writes what it
says, in order. `status.distillation` is a part of the status patch the
reconcile writes anyway, so it costs no write of its own. Nothing is written
when nothing changed.

A run made by hand for a cascade that is missing or does not distil is told so
when it appears (`refuse_orphan_run`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import kopf
from pydantic import ValidationError

from kascade.api.distillation import DISTILLATION_KIND, DISTILLATION_PLURAL, Distillation
from kascade.api.modelcascade import API_VERSION, PLURAL, ModelCascade
from kascade.api.times import TimeError, format_time, parse_time
from kascade.operator.cascade_resource import plain as plain_body
from kascade.operator.cascade_writes import Target, post
from kascade.operator.kube_api import ApiError, KubeApi
from kascade.operator.run_plan import (
    NO_POLICY,
    CreateJob,
    CreateRun,
    DeleteJob,
    DeleteRun,
    FailRun,
    ObservedRun,
    ObservedRuns,
    PostNotice,
    RecordJob,
    RunAction,
    RunStatusWrite,
    WithdrawPromotion,
    WriteDecision,
    needs_job,
    plan_distillation,
    summary_patch,
)

if TYPE_CHECKING:
    from kascade.operator.reconcile import Operator

log = logging.getLogger("kascade.operator")

NO_CRD = "the Distillation CRD is not installed: kubectl apply -f crds/ (Helm installs crds/ on the first install only)"


async def reconcile_distillations(
    operator: Operator, cascade: ModelCascade, target: Target
) -> tuple[ModelCascade, dict[str, Any]]:
    """The distillation step: (the cascade as served, for the builders; status.distillation, `{}`: leave it)."""
    if cascade.spec.distillation is None and not target.status.get("distillation"):
        return cascade, {}  # no run is made or followed for a cascade without spec.distillation (nor any list call)
    observed = await observe_runs(operator.api, cascade, target)
    if observed is None:
        return cascade, summary_patch(cascade, [], NO_CRD)
    plan = plan_distillation(cascade, observed, operator.settings, now=operator.now())
    await apply_run_actions(operator.api, target, plan.actions)
    return plan.served, plan.status


async def observe_runs(api: KubeApi, cascade: ModelCascade, target: Target) -> ObservedRuns | None:
    """The runs naming the cascade and the Jobs the plan follows; None when the Distillation CRD is not installed."""
    namespace = target.namespace
    try:
        listed = await api.list(API_VERSION, DISTILLATION_PLURAL, namespace=namespace, kind=DISTILLATION_KIND)
    except ApiError as error:
        if not error.not_found:
            raise
        return None
    runs = []
    for raw in listed:
        if (raw.get("spec") or {}).get("cascade") != target.name:
            continue
        try:
            run = Distillation.model_validate(raw)
        except ValidationError as error:
            log.warning("%s/%s: unreadable Distillation: %s", namespace, raw["metadata"]["name"], error)
            continue
        job = None
        if needs_job(cascade, run):
            job = await api.get("batch/v1", "jobs", run.metadata.name, namespace=namespace)
        runs.append(ObservedRun(run, raw, job))
    logged = int(((target.status.get("traffic") or {}).get("escalationsLogged")) or 0)
    return ObservedRuns(runs, logged=logged, cascade_created=_cascade_created(target))


def _cascade_created(target: Target) -> datetime | None:
    stamp = (target.body.get("metadata") or {}).get("creationTimestamp")
    if stamp is None:
        return None
    try:
        return parse_time(stamp)
    except TimeError as error:  # the API server writes it: not seen from one, and no reason to stop the runs
        log.warning(
            "%s/%s: metadata.creationTimestamp: %s; the schedule counts from now", target.namespace, target.name, error
        )
        return None


async def apply_run_actions(api: KubeApi, target: Target, actions: Sequence[RunAction]) -> None:
    """The plan's writes, in order. An action that does not go as planned (`_apply` False) skips its run's later
    actions and the start of a new run, which counted every run decided; the next reconcile reads what happened."""
    cut: set[str] = set()
    for action in actions:
        if action.run in cut or (cut and isinstance(action, CreateRun)):
            continue
        if not await _apply(api, target, action):
            cut.add(action.run)


async def _apply(api: KubeApi, target: Target, action: RunAction) -> bool:
    """One action; False when it did not go as planned (a conflict on a guarded write, a Job refused)."""
    namespace = target.namespace
    match action:
        case CreateJob():
            return await _create_job(api, namespace, action)
        case DeleteJob():
            await api.delete("batch/v1", "jobs", action.run, namespace=namespace)
        case FailRun() | RecordJob() | WithdrawPromotion() | WriteDecision():
            return await _write_status(api, namespace, action)
        case PostNotice():
            post(target.body, action.notice)
        case DeleteRun():
            await api.delete(API_VERSION, DISTILLATION_PLURAL, action.run, namespace=namespace)
        case CreateRun():
            manifest = copy.deepcopy(action.manifest)
            kopf.append_owner_reference(manifest, owner=target.body)
            try:
                await api.create(manifest)
            except ApiError as error:
                if not error.conflict:
                    raise
    return True


async def _write_status(api: KubeApi, namespace: str, action: RunStatusWrite) -> bool:
    """The run's status merge patch; a guarded one the pod overtook (409) is False: the next reconcile reads it."""
    version = action.resource_version if isinstance(action, FailRun) else None
    try:
        await api.patch_status(
            API_VERSION,
            DISTILLATION_PLURAL,
            action.run,
            namespace=namespace,
            status_patch=action.patch,
            resource_version=version,
        )
    except ApiError as error:
        if version is None or not error.conflict:
            raise
        return False
    return True


async def _create_job(api: KubeApi, namespace: str, action: CreateJob) -> bool:
    """The run's Job; one the API server refuses fails the run with its reason (False). A name taken is its Job."""
    manifest = copy.deepcopy(action.manifest)
    kopf.append_owner_reference(manifest, owner=kopf.Body(cast(kopf.RawBody, action.owner)))  # the run as listed
    try:
        await api.create(manifest)
    except ApiError as error:
        if error.transient:
            raise
        if error.conflict:
            return True  # a Job of that name exists: the run's own, made by an earlier reconcile
        await _write_status(api, namespace, FailRun(action.run, f"its Job was refused: {error.message}", action.at))
        return False
    return True


async def refuse_orphan_run(operator: Operator, body: Mapping[str, Any]) -> None:
    """A run naming a cascade that does not exist, or does not distil, is Failed with the reason (once, unstarted)."""
    try:
        run = Distillation.model_validate(plain_body(body))
    except ValidationError:
        return  # the API server checked it against the CRD; a newer shape is not this operator's to judge
    if run.status is not None:
        return  # its cascade's reconcile has taken it (or someone said something already)
    namespace = run.metadata.namespace or "default"
    found = await operator.api.get(API_VERSION, PLURAL, run.spec.cascade, namespace=namespace)
    if found is None:
        message = f"cascade {run.spec.cascade} does not exist in namespace {namespace}"
    elif not (found.get("spec") or {}).get("distillation"):
        message = NO_POLICY.format(cascade=run.spec.cascade)
    else:
        return
    await _write_status(operator.api, namespace, FailRun(run.metadata.name, message, format_time(operator.now())))
