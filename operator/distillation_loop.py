"""A cascade's distillation runs, each reconcile: their Jobs, their promotions, the next run, the status. Idempotent.

Run before the children are built: what the student tier serves comes from the
runs' promotion records (`promotion.serving`), never from a write to the spec.

1. every unfinished run naming the cascade gets its Job (owned by the run); a
   Job that failed, or completed without the run reporting a result, finishes
   the run as Failed with the Job's reason;
2. a promotion in force that no longer applies (the user edited the tier's
   `model.uri`, set `promotion: Manual` or removed spec.distillation) is
   withdrawn in its run's status, for good (`promotion.withdrawals`);
3. every finished run not yet decided is decided (`promotion.decide_promotion`)
   against what the tier serves; the decision is written into the run's status
   (the one write a promotion is), and an Event on the cascade says what happened;
4. the schedule (`distillation_schedule.plan_runs`): old runs beyond the
   history limit are deleted, a new run is created when one is due, starting
   from the model the tier serves (a promotion over a promotion chains);
5. the cascade as served (`promotion.served_cascade`) goes to the builders, and
   `status.distillation` says what the tier serves and why, the rollback
   target, the last run and what the next one waits for: a part of the status
   patch the reconcile writes anyway, so it costs no write of its own.
Nothing is written when nothing changed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import kopf
from pydantic import ValidationError

from kascade.api.distillation import DISTILLATION_KIND, DISTILLATION_PLURAL, Distillation, DistillationPhase
from kascade.api.modelcascade import API_VERSION, PLURAL, ModelCascade
from kascade.api.status import DistillationSummary, PromotedModel
from kascade.operator.build_distillation import build_distillation, build_distillation_job, student_tier
from kascade.operator.cascade_resource import plain as plain_body
from kascade.operator.cascade_writes import Target, post
from kascade.operator.counter_slots import parse_time
from kascade.operator.distillation_schedule import created_at, decided, phase_of, plan_runs, promoted
from kascade.operator.kube_api import ApiError
from kascade.operator.notices import Notice
from kascade.operator.promotion import decide_promotion, served_cascade, serving, withdrawal_patch, withdrawals

if TYPE_CHECKING:
    from kascade.operator.reconcile import Operator

log = logging.getLogger("kascade.operator")

NO_CRD = "the Distillation CRD is not installed: kubectl apply -f crds/ (Helm installs crds/ on the first install only)"
MAX_RUN_NAME = 63  # the Job's name is a label value of its pods (batch.kubernetes.io/job-name)
RUN_NAME_TOO_LONG = "the run's name {name!r} is longer than 63 characters, which its Job's pods cannot carry as a label"
NO_POLICY = "cascade {cascade} has no spec.distillation: set it (outputUri, schedule) for its runs to be run"


async def reconcile_distillations(
    operator: Operator, cascade: ModelCascade, target: Target
) -> tuple[ModelCascade, dict[str, Any]]:
    """Steps 1–5 for one cascade: (the cascade as served, for the builders; status.distillation, `{}`: leave it)."""
    if cascade.spec.distillation is None and not target.status.get("distillation"):
        return cascade, {}  # no run is made or followed for a cascade without spec.distillation (nor any list call)
    api, namespace = operator.api, target.namespace
    try:
        listed = await api.list(API_VERSION, DISTILLATION_PLURAL, namespace=namespace, kind=DISTILLATION_KIND)
    except ApiError as error:
        if not error.not_found:
            raise
        return cascade, summary_patch(cascade, [], NO_CRD)
    runs: list[tuple[Distillation, dict[str, Any]]] = []
    for raw in listed:
        if (raw.get("spec") or {}).get("cascade") != target.name:
            continue
        try:
            runs.append((Distillation.model_validate(raw), raw))
        except ValidationError as error:
            log.warning("%s/%s: unreadable Distillation: %s", namespace, raw["metadata"]["name"], error)
    now = operator.clock()
    followed = [await _follow(operator, cascade, run, raw, now) for run, raw in runs]
    current = await _withdraw(operator, cascade, target, [run for run, _ in followed], now)
    for index, (_, settled) in enumerate(followed):
        if settled:
            current[index] = await _decide(operator, cascade, target, current, current[index], now)
    served = served_cascade(cascade, serving(cascade, current))  # a promotion just made is served at once
    waiting, kept = await _schedule(operator, served, target, current, now)
    return served, summary_patch(cascade, kept, waiting)


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
    await _patch_run(operator, run, _failed(message, operator.clock()))


async def _patch_run(
    operator: Operator, run: Distillation, patch: Mapping[str, Any], *, guarded: bool = False
) -> Distillation:
    """The run's status merge patch; `guarded`: only over the status this reconcile read (else the run as read)."""
    version = (run.metadata.model_extra or {}).get("resourceVersion") if guarded else None
    try:
        written = await operator.api.patch_status(
            API_VERSION,
            DISTILLATION_PLURAL,
            run.metadata.name,
            namespace=run.metadata.namespace,
            status_patch=dict(patch),
            resource_version=version,
        )
    except ApiError as error:
        if not (guarded and error.conflict):
            raise
        return run  # the pod wrote meanwhile: the next reconcile reads what it wrote
    return Distillation.model_validate(written)


def _condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    found = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("type") == type_]
    return found[0] if found and found[0].get("status") == "True" else None


def _failed(message: str, now: str) -> dict[str, Any]:
    return {"phase": DistillationPhase.failed.value, "message": message, "finishedAt": now}


async def _follow(
    operator: Operator, cascade: ModelCascade, run: Distillation, raw: dict[str, Any], now: str
) -> tuple[Distillation, bool]:
    """Step 1 for one run: its Job made, or its Job's end read into it. (The run now; whether it may be decided.)

    A run the pod reported Failed may not be decided while its Job still runs:
    the Job retries a pod that failed unexpectedly, and the retry may succeed.
    """
    phase = phase_of(run)
    if phase is DistillationPhase.succeeded or (run.status is not None and run.status.promotion is not None):
        return run, True
    name, namespace = run.metadata.name, run.metadata.namespace
    if cascade.spec.distillation is None and not phase.finished:  # spec.distillation was removed: stop the run
        await operator.api.delete("batch/v1", "jobs", name, namespace=namespace)
        return await _patch_run(operator, run, _failed(NO_POLICY.format(cascade=cascade.metadata.name), now)), True
    job = await operator.api.get("batch/v1", "jobs", name, namespace=namespace)
    if job is None:
        if phase.finished:
            return run, True  # its Job was deleted after the run failed
        return await _create_job(operator, run, raw, now)
    failed, complete = _condition(job, "Failed"), _condition(job, "Complete")
    if phase.finished:
        return run, failed is not None or complete is not None
    if failed is not None:
        message = f"the Job failed ({failed.get('reason', '')}): {failed.get('message', '')}".rstrip(": ")
    elif complete is not None:
        message = "the Job completed but the run reported no result (see the pod's log)"
    else:
        return run, False
    marked = await _patch_run(operator, run, _failed(message, now), guarded=True)
    return marked, phase_of(marked).finished


async def _create_job(
    operator: Operator, run: Distillation, raw: dict[str, Any], now: str
) -> tuple[Distillation, bool]:
    """The run's Job; a Job the API server refuses fails the run with its reason."""
    name = run.metadata.name
    if len(name) > MAX_RUN_NAME:
        return await _patch_run(operator, run, _failed(RUN_NAME_TOO_LONG.format(name=name), now)), True
    manifest = build_distillation_job(run, operator.settings)
    kopf.append_owner_reference(manifest, owner=raw)
    try:
        await operator.api.create(manifest)
    except ApiError as error:
        if error.status >= 500 or error.status == 0:
            raise
        if not error.conflict:
            return await _patch_run(operator, run, _failed(f"its Job was refused: {error.message}", now)), True
    if run.status is None or run.status.job != name:
        return await _patch_run(operator, run, {"job": name, "message": f"Job {name} created"}), False
    return run, False


async def _withdraw(
    operator: Operator, cascade: ModelCascade, target: Target, runs: list[Distillation], now: str
) -> list[Distillation]:
    """Step 2: each promotion that no longer applies is withdrawn in its run's status. The runs as they are now."""
    ending = {run.metadata.name: why for run, why in withdrawals(cascade, runs)}
    current = []
    for run in runs:
        if (why := ending.get(run.metadata.name)) is not None:
            run = await _patch_run(operator, run, withdrawal_patch(run, why, now))
            post(target.body, Notice("Normal", "PromotionWithdrawn", f"{run.metadata.name}: {why}"))
        current.append(run)
    return current


async def _decide(
    operator: Operator, cascade: ModelCascade, target: Target, runs: list[Distillation], run: Distillation, now: str
) -> Distillation:
    """Step 3 for one run: promote it, or say why not; once, in its status. The run as it is now."""
    promotion = decide_promotion(run, cascade, serving(cascade, runs), now=now)
    if promotion is None:
        return run
    written = await _patch_run(
        operator, run, {"promotion": promotion.model_dump(mode="json", by_alias=True, exclude_none=True)}
    )
    if promotion.promoted:
        post(target.body, Notice("Normal", "Promoted", f"{run.metadata.name}: {promotion.message}"))
    else:
        post(
            target.body,
            Notice("Warning", "NotPromoted", f"{run.metadata.name} ({promotion.reason}): {promotion.message}"),
        )
    return written


async def _schedule(
    operator: Operator, cascade: ModelCascade, target: Target, runs: list[Distillation], now: str
) -> tuple[str, list[Distillation]]:
    """Step 3: old runs deleted, a new one created when due; why none starts (or which did), and the runs kept."""
    policy = cascade.spec.distillation
    if policy is None:
        return "", runs
    logged = int(((target.status.get("traffic") or {}).get("escalationsLogged")) or 0)
    cascade_created = parse_time((target.body.get("metadata") or {}).get("creationTimestamp"))
    moment = parse_time(now) or datetime.now(UTC)
    plan = plan_runs(
        policy, runs, cascade=cascade.metadata.name, cascade_created=cascade_created, logged=logged, now=moment
    )
    for name in plan.delete:
        await operator.api.delete(API_VERSION, DISTILLATION_PLURAL, name, namespace=target.namespace)
    kept = [run for run in runs if run.metadata.name not in plan.delete]
    if plan.start is None:
        return plan.waiting, kept
    manifest = build_distillation(cascade, operator.settings, name=plan.start, log_records=logged)
    kopf.append_owner_reference(manifest, owner=target.body)
    try:
        created = await operator.api.create(manifest)
    except ApiError as error:
        if not error.conflict:
            raise
        return f"run {plan.start} started", kept
    return f"run {plan.start} started", [*kept, Distillation.model_validate(created)]


def summary_patch(cascade: ModelCascade, runs: list[Distillation], waiting: str) -> dict[str, Any]:
    """Step 4: `status.distillation` from the runs as steps 1–3 left them; null once spec.distillation is gone."""
    if cascade.spec.distillation is None:
        return {"distillation": None}
    summary = summarize_runs(cascade, sorted(runs, key=created_at), waiting)
    return {"distillation": summary.model_dump(mode="json", by_alias=True, exclude_none=True)}


def summarize_runs(cascade: ModelCascade, runs: list[Distillation], waiting: str) -> DistillationSummary:
    """`status.distillation` from the spec and the runs (oldest first), nothing else: a lost status is rebuilt. Pure."""
    served = serving(cascade, runs)
    record = served.promotion.status.promotion if served.promotion and served.promotion.status else None
    in_effect = None
    if served.promotion is not None and record is not None:
        in_effect = PromotedModel(
            run=served.promotion.metadata.name, model=served.model or "", replaces=record.replaces or "", at=record.at
        )
    promotions = [run.status.promotion for run in runs if decided(run)]  # type: ignore[union-attr]
    last_promoted = [run for run in runs if promoted(run)][-1:]
    last = runs[-1] if runs else None
    return DistillationSummary(
        tier=served.tier or student_tier(cascade),
        serving=served.model or "",
        spec_model=served.spec_model,
        promoted=in_effect,
        message=served.message,
        runs=len(runs),
        waiting=waiting,
        rollback_target=record.previous_model if record is not None else None,
        last_promoted=last_promoted[0].metadata.name if last_promoted else None,
        last_run=last.metadata.name if last else None,
        last_run_phase=phase_of(last).value if last else None,
        last_decision=promotions[-1].reason if promotions else None,  # type: ignore[union-attr]
    )
