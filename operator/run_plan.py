"""What to do about a cascade's distillation runs now: a plan of actions from what was read. Pure.

The distillation step of a reconcile (`distillation_loop`) reads the cascade's
runs and the Jobs of those it follows, plans here, and applies the actions in
order. The plan, in the order its actions are applied:

1. every unfinished run gets its Job (`CreateJob`, owned by the run); a Job
   that failed, or completed without the run reporting a result, finishes the
   run as Failed with the Job's reason (`FailRun`, written only over the
   status read: the pod may be writing it); a run of a cascade whose
   spec.distillation was removed is stopped (`DeleteJob`, `FailRun`);
2. a promotion in force that no longer applies (the user edited the tier's
   `model.uri`, set `promotion: Manual` or removed spec.distillation) is
   withdrawn in its run's status, for good (`WithdrawPromotion`);
3. every finished run not yet decided is decided (`promotion.decide_promotion`)
   against what the tier serves (`WriteDecision`: the one write a promotion is),
   and an Event on the cascade says what happened (`PostNotice`);
4. the schedule (`distillation_schedule.plan_runs`): old runs beyond the
   history limit are deleted (`DeleteRun`), a new run is created when one is
   due (`CreateRun`), starting from the model the tier serves (a promotion over
   a promotion chains);
5. the cascade as served (`promotion.served_cascade`) goes to the builders, and
   `status.distillation` says what the tier serves and why, the rollback
   target, the last run and what the next one waits for.

Each step sees the runs as the earlier actions leave them (a status write is a
merge patch, applied here to the run as read), so a run finished in step 1 is
decided in step 3 of the same plan. Two writes may turn out otherwise than
planned: a guarded `FailRun` of a run the pod wrote meanwhile (a conflict), and
a Job the API server refuses (the run is then failed with the reason). The
apply then skips that run's later actions and the start of a new run (which
counted every run decided); the next reconcile reads what happened. Nothing is
planned when nothing changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kascade.api.distillation import Distillation, DistillationPhase, DistillationStatus, Promotion
from kascade.api.modelcascade import ModelCascade
from kascade.api.status import DistillationSummary, PromotedModel
from kascade.api.times import format_time
from kascade.operator.build_distillation import build_distillation, build_distillation_job, student_tier
from kascade.operator.counters import apply_merge_patch
from kascade.operator.distillation_schedule import creation_time, plan_runs
from kascade.operator.notices import Notice
from kascade.operator.promotion import decide_promotion, served_cascade, serving, withdrawals
from kascade.operator.settings import OperatorSettings

MAX_RUN_NAME = 63  # the Job's name is a label value of its pods (batch.kubernetes.io/job-name)
RUN_NAME_TOO_LONG = "the run's name {name!r} is longer than 63 characters, which its Job's pods cannot carry as a label"
NO_POLICY = "cascade {cascade} has no spec.distillation: set it (outputUri, schedule) for its runs to be run"


# --- what was read ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ObservedRun:
    """A run naming the cascade, as listed, and its Job (read only where `needs_job` holds; None: it has none)."""

    run: Distillation
    listed: Mapping[str, Any]  # the run as the API server listed it: the owner of its Job
    job: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ObservedRuns:
    """Everything the plan reads besides the spec."""

    runs: list[ObservedRun]
    logged: int  # the cascade's status.traffic.escalationsLogged
    cascade_created: datetime | None  # None: the schedule counts from now


def needs_job(cascade: ModelCascade, run: Distillation) -> bool:
    """Whether the plan reads the run's Job: it follows runs not yet done, unless spec.distillation is gone."""
    if run.phase is DistillationPhase.succeeded or run.decided:
        return False
    return cascade.spec.distillation is not None or run.phase.finished


# --- the actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateJob:
    """The run's Job, owned by the run; a refusal fails the run with the API server's reason (at `at`)."""

    run: str
    manifest: dict[str, Any]
    owner: Mapping[str, Any]
    at: str


@dataclass(frozen=True)
class DeleteJob:
    run: str  # the Job has its run's name


@dataclass(frozen=True)
class FailRun:
    """The run ends Failed with `message`; with `resource_version`, only over that version of it (else not at all)."""

    run: str
    message: str
    at: str
    resource_version: str | None = None

    @property
    def patch(self) -> dict[str, Any]:
        return failed_patch(self.message, self.at)


@dataclass(frozen=True)
class RecordJob:
    """The run's status names its Job."""

    run: str

    @property
    def patch(self) -> dict[str, Any]:
        return {"job": self.run, "message": f"Job {self.run} created"}


@dataclass(frozen=True)
class WithdrawPromotion:
    """The run's promotion stops applying, for good; the rest of the record stays."""

    run: str
    why: str
    at: str

    @property
    def patch(self) -> dict[str, Any]:
        return {"promotion": {"withdrawnAt": self.at, "withdrawal": self.why}}


@dataclass(frozen=True)
class WriteDecision:
    """The decision about the run's student, once, in its status."""

    run: str
    promotion: Promotion

    @property
    def patch(self) -> dict[str, Any]:
        return {"promotion": self.promotion.model_dump(mode="json", by_alias=True, exclude_none=True)}


@dataclass(frozen=True)
class PostNotice:
    """An Event on the cascade about the run."""

    run: str
    notice: Notice


@dataclass(frozen=True)
class DeleteRun:
    run: str


@dataclass(frozen=True)
class CreateRun:
    """A new run, owned by the cascade."""

    manifest: dict[str, Any]

    @property
    def run(self) -> str:
        return str(self.manifest["metadata"]["name"])


RunStatusWrite = FailRun | RecordJob | WithdrawPromotion | WriteDecision
RunAction = CreateJob | DeleteJob | RunStatusWrite | PostNotice | DeleteRun | CreateRun


@dataclass(frozen=True)
class DistillationPlan:
    actions: list[RunAction]  # in the order they are applied
    served: ModelCascade  # the cascade as its tiers are served: what the builders build
    status: dict[str, Any]  # `{"distillation": ...}`: the part of the cascade's status patch


def failed_patch(message: str, at: str) -> dict[str, Any]:
    """The status merge patch that ends a run as Failed."""
    return DistillationStatus.failed(message, at).merge_patch_body()


# --- the plan ---------------------------------------------------------------------------------


@dataclass
class _Planned:
    """The actions so far, and the runs (by name, as listed) as they leave them."""

    runs: dict[str, Distillation]
    actions: list[RunAction] = field(default_factory=list)

    def add(self, actions: Iterable[RunAction]) -> None:
        for action in actions:
            self.actions.append(action)
            if isinstance(action, RunStatusWrite):
                self.runs[action.run] = _patched(self.runs[action.run], action.patch)

    def current(self) -> list[Distillation]:
        return list(self.runs.values())


def _patched(run: Distillation, patch: Mapping[str, Any]) -> Distillation:
    """The run as the API server holds it once the status merge patch is written."""
    status = run.status.model_dump(mode="json", by_alias=True, exclude_none=True) if run.status else {}
    written = DistillationStatus.model_validate(apply_merge_patch(status, patch))
    return run.model_copy(update={"status": written})


def plan_distillation(
    cascade: ModelCascade, observed: ObservedRuns, settings: OperatorSettings, *, now: datetime
) -> DistillationPlan:
    """Steps 1–5 for one cascade (`cascade`: as its spec is; `observed`: its runs and their Jobs)."""
    at = format_time(now)
    planned = _Planned({seen.run.metadata.name: seen.run for seen in observed.runs})
    settled = []  # runs that may be decided now, in the order listed
    for seen in observed.runs:
        actions, may_decide = _follow(cascade, seen, settings, at)
        planned.add(actions)
        if may_decide:
            settled.append(seen.run.metadata.name)
    for run, why in withdrawals(cascade, planned.current()):
        name = run.metadata.name
        planned.add(
            [
                WithdrawPromotion(name, why, at),
                PostNotice(name, Notice("Normal", "PromotionWithdrawn", f"{name}: {why}")),
            ]
        )
    for name in settled:
        promotion = decide_promotion(planned.runs[name], cascade, serving(cascade, planned.current()), now=at)
        if promotion is not None:
            planned.add([WriteDecision(name, promotion), PostNotice(name, _decision_notice(name, promotion))])
    served = served_cascade(cascade, serving(cascade, planned.current()))  # a promotion just made is served at once
    waiting, kept = _schedule(served, observed, settings, planned, now)
    return DistillationPlan(planned.actions, served, summary_patch(cascade, kept, waiting))


def _condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    found = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("type") == type_]
    return found[0] if found and found[0].get("status") == "True" else None


def _follow(
    cascade: ModelCascade, seen: ObservedRun, settings: OperatorSettings, at: str
) -> tuple[list[RunAction], bool]:
    """Step 1 for one run: its Job made, or its Job's end read into it. (The actions; whether it may be decided.)

    A run the pod reported Failed may not be decided while its Job still runs:
    the Job retries a pod that failed unexpectedly, and the retry may succeed.
    """
    run = seen.run
    name, phase = run.metadata.name, run.phase
    if phase is DistillationPhase.succeeded or run.decided:
        return [], True
    if cascade.spec.distillation is None and not phase.finished:  # spec.distillation was removed: stop the run
        return [DeleteJob(name), FailRun(name, NO_POLICY.format(cascade=cascade.metadata.name), at)], True
    if seen.job is None:
        if phase.finished:
            return [], True  # its Job was deleted after the run failed
        if len(name) > MAX_RUN_NAME:
            return [FailRun(name, RUN_NAME_TOO_LONG.format(name=name), at)], True
        create: list[RunAction] = [CreateJob(name, build_distillation_job(run, settings), seen.listed, at)]
        recorded = run.status is not None and run.status.job == name
        return create if recorded else [*create, RecordJob(name)], False
    failed, complete = _condition(seen.job, "Failed"), _condition(seen.job, "Complete")
    if phase.finished:
        return [], failed is not None or complete is not None
    if failed is not None:
        message = f"the Job failed ({failed.get('reason', '')}): {failed.get('message', '')}".rstrip(": ")
    elif complete is not None:
        message = "the Job completed but the run reported no result (see the pod's log)"
    else:
        return [], False
    return [FailRun(name, message, at, resource_version=run.resource_version)], True


def _decision_notice(name: str, promotion: Promotion) -> Notice:
    if promotion.promoted:
        return Notice("Normal", "Promoted", f"{name}: {promotion.message}")
    return Notice("Warning", "NotPromoted", f"{name} ({promotion.reason}): {promotion.message}")


def _schedule(
    served: ModelCascade, observed: ObservedRuns, settings: OperatorSettings, planned: _Planned, now: datetime
) -> tuple[str, list[Distillation]]:
    """Step 4: old runs deleted, a new one created when due. Why none starts (or which did); the runs kept, oldest
    first."""
    runs = sorted(planned.current(), key=creation_time)
    policy = served.spec.distillation
    if policy is None:
        return "", runs
    schedule = plan_runs(
        policy,
        runs,
        cascade=served.metadata.name,
        cascade_created=observed.cascade_created,
        logged=observed.logged,
        now=now,
    )
    planned.add(DeleteRun(name) for name in schedule.delete)
    kept = [run for run in runs if run.metadata.name not in schedule.delete]
    if schedule.start is None:
        return schedule.waiting, kept
    manifest = build_distillation(served, settings, name=schedule.start, log_records=observed.logged)
    planned.add([CreateRun(manifest)])
    return f"run {schedule.start} started", [*kept, Distillation.model_validate(manifest)]


# --- status.distillation ----------------------------------------------------------------------


def summary_patch(cascade: ModelCascade, oldest_first: list[Distillation], waiting: str) -> dict[str, Any]:
    """Step 5: `status.distillation` from the runs as the plan leaves them; null once spec.distillation is gone."""
    if cascade.spec.distillation is None:
        return {"distillation": None}
    summary = summarize_runs(cascade, oldest_first, waiting)
    return {"distillation": summary.model_dump(mode="json", by_alias=True, exclude_none=True)}


def summarize_runs(cascade: ModelCascade, runs: list[Distillation], waiting: str) -> DistillationSummary:
    """`status.distillation` from the spec and the runs (oldest first), nothing else: a lost status is rebuilt."""
    served = serving(cascade, runs)
    record = served.promotion.promotion if served.promotion is not None else None
    in_effect = None
    if served.promotion is not None and record is not None:
        in_effect = PromotedModel(
            run=served.promotion.metadata.name, model=served.model or "", replaces=record.replaces or "", at=record.at
        )
    decisions = [run.promotion for run in runs if run.promotion is not None]
    last_promoted = [run for run in runs if run.promoted][-1:]
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
        last_run_phase=last.phase.value if last else None,
        last_decision=decisions[-1].reason if decisions else None,
    )
