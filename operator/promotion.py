"""Which model a student tier serves, and whether a finished run's student replaces it. Pure.

The operator never writes a cascade's spec: `spec.tiers` is an atomic list, so
`helm upgrade` (server-side apply), `kubectl apply --server-side` and Argo CD
would conflict with a field the operator set in it, and a client-side apply of
the user's manifest would undo it. A promotion is a record in the status of
the run that made it (`Promotion`: the model, `replaces` = the tier's
`model.uri` in the spec then, `previousModel` = the model served before). The
tier serves (`served_cascade`, what the builders build) the model of the tier's
**last** promoted run, with the pre-route score the run refitted for it where
it certified one (`status.preRoute`; the tier's own `probeRate` kept), while all
of these hold (`_why_not_served`):
- spec.distillation is there, names that tier, and its promotion is Automatic;
- the tier's `model.uri` still equals the promotion's `replaces`;
- the promotion was not withdrawn.
Once one stops holding, the promotion is withdrawn for good (`withdrawals`:
its run says when and why): an edit of `model.uri` is a pin, `promotion:
Manual` a rollback to `model.uri`, and setting either back later does not bring
the old promotion back. A promotion over a promotion chains: the next run
starts from the served model, and is recorded over the same `model.uri`.

A run is promoted only when it succeeded, its gate passed, and the tier still
serves the student the run started from (the gate compared against that one;
a model changed meanwhile, by a user or a rollback, was never judged). A
decision is made once per run and written into its status; a failed gate never
promotes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from kascade.api.distillation import Distillation, DistillationPhase, Promotion, PromotionReason
from kascade.api.errors import validation_problems
from kascade.api.loop import PromotionMode
from kascade.api.modelcascade import ModelCascade, Tier
from kascade.api.pre_route import PreRoute
from kascade.operator.build_distillation import student_tier
from kascade.operator.distillation_schedule import creation_time


@dataclass(frozen=True)
class Serving:
    """What a cascade's student tier serves, and why."""

    tier: str | None  # the student tier; None without spec.distillation
    spec_model: str | None  # its model.uri in the spec
    model: str | None  # what it serves: the promotion in effect's model, else spec_model
    promotion: Distillation | None  # the run whose promotion is in effect
    message: str
    pre_route: PreRoute | None = None  # the promoted run's refitted pre-route score; None: the tier keeps its own


def tier_index(cascade: ModelCascade, tier: str) -> int | None:
    return next((i for i, t in enumerate(cascade.spec.tiers) if t.name == tier), None)


def spec_model(cascade: ModelCascade, tier: str) -> str | None:
    """A student tier's `model.uri` in the spec; None when it is gone or became the last tier."""
    index = tier_index(cascade, tier)
    return cascade.spec.tiers[index].model.uri if index is not None and index < len(cascade.spec.tiers) - 1 else None


def last_promoted(runs: Sequence[Distillation], tier: str) -> Distillation | None:
    """The tier's newest promoted run: the only promotion that can be in effect (it supersedes the older ones)."""
    return max((run for run in runs if run.spec.tier == tier and run.promoted), key=creation_time, default=None)


def _why_not_served(cascade: ModelCascade, run: Distillation) -> str | None:
    """Why a promotion no longer applies to the cascade as its spec is now; None: it does."""
    assert run.promotion is not None
    policy, tier, replaces = cascade.spec.distillation, run.spec.tier, run.promotion.replaces
    current = spec_model(cascade, tier)
    if policy is None:
        return f"spec.distillation was removed: tier {tier} serves its model.uri"
    if student_tier(cascade) != tier or current is None:
        return f"tier {tier} is no longer spec.distillation's student tier"
    if policy.promotion is PromotionMode.manual:
        return f"spec.distillation.promotion is Manual: tier {tier} serves its model.uri {current}"
    if current != replaces:
        return f"tier {tier}'s model.uri changed from {replaces} to {current}: it serves {current} (a pin)"
    return None


def withdrawals(cascade: ModelCascade, runs: Sequence[Distillation]) -> list[tuple[Distillation, str]]:
    """Promotions in force that no longer apply, with why: each is withdrawn for good (written into its run)."""
    ending = []
    for tier in sorted({run.spec.tier for run in runs}):
        last = last_promoted(runs, tier)
        record = last.promotion if last is not None else None
        if last is not None and record is not None and record.in_force and (why := _why_not_served(cascade, last)):
            ending.append((last, why))
    return ending


def serving(cascade: ModelCascade, runs: Sequence[Distillation]) -> Serving:
    """What the student tier serves, from the spec and the runs' promotion records (nothing else)."""
    if cascade.spec.distillation is None:
        return Serving(None, None, None, None, "")
    tier = student_tier(cascade)
    current = spec_model(cascade, tier)
    last = last_promoted(runs, tier)
    status = last.status if last is not None else None
    record = status.promotion if status is not None else None
    if last is None or status is None or record is None:
        return Serving(tier, current, current, None, f"tier {tier} serves its model.uri: no run was promoted")
    why = _why_not_served(cascade, last)
    if record.in_force and why is None:
        model = status.model
        message = f"tier {tier} serves {model}, promoted by {last.metadata.name} in place of its model.uri {current}"
        if status.pre_route is not None:
            message += ", with the pre-route score refitted for it"
        return Serving(tier, current, model, last, message, status.pre_route)
    if record.withdrawn_at is not None:
        why = f"the promotion of {last.metadata.name} was withdrawn at {record.withdrawn_at}: {record.withdrawal}"
    return Serving(tier, current, current, None, why or f"tier {tier} serves its model.uri")


def served_cascade(cascade: ModelCascade, served: Serving) -> ModelCascade:
    """The cascade as its tiers are served: the student tier's `model.uri` is the promoted model. What builders build."""
    if served.promotion is None or served.model is None:
        return cascade
    tiers = [
        with_promoted(tier, served.model, served.pre_route) if tier.name == served.tier else tier
        for tier in cascade.spec.tiers
    ]
    return cascade.model_copy(update={"spec": cascade.spec.model_copy(update={"tiers": tiers})})


def with_promoted(tier: Tier, model: str, pre_route: PreRoute | None) -> Tier:
    """The tier on the promoted `model`, with the pre-route score refitted for it (the tier's own probeRate kept)."""
    update: dict[str, object] = {"model": tier.model.model_copy(update={"uri": model})}
    if pre_route is not None:
        own = tier.pre_route
        update["pre_route"] = pre_route.model_copy(update={"probe_rate": own.probe_rate}) if own else pre_route
    return tier.model_copy(update=update)


def decide_promotion(run: Distillation, cascade: ModelCascade, served: Serving, *, now: str) -> Promotion | None:
    """The decision about a finished run not yet decided; None while it runs or once decided."""
    status = run.status
    if status is None or not status.phase.finished or status.promotion is not None:
        return None
    if status.phase is DistillationPhase.failed:
        return Promotion(
            promoted=False, reason=PromotionReason.run_failed, message=status.message or "the run failed", at=now
        )
    gate = status.gate
    if gate is None or not gate.passed:
        reasons = "; ".join(gate.reasons) if gate is not None and gate.reasons else "no gate verdict was reported"
        return Promotion(
            promoted=False, reason=PromotionReason.gate_failed, message=f"the gate failed: {reasons}", at=now
        )
    tier = run.spec.tier
    if served.tier != tier or served.model != run.spec.student or not status.model:
        now_serving = (
            f"serves {served.model}" if served.tier == tier else "is no longer spec.distillation's student tier"
        )
        return Promotion(
            promoted=False,
            reason=PromotionReason.student_changed,
            at=now,
            message=f"tier {tier} {now_serving}, not {run.spec.student} that the run started from "
            "and was judged against",
        )
    shown = f" (gain {gate.gain:+.4f})" if gate.gain is not None else ""
    policy = cascade.spec.distillation
    if policy is not None and policy.promotion is PromotionMode.manual:
        return Promotion(
            promoted=False,
            reason=PromotionReason.manual,
            at=now,
            message=f"the gate passed{shown}; spec.distillation.promotion is Manual: set tier {tier}'s "
            f"model.uri to {status.model}"
            + (" and its preRoute to this run's status.preRoute" if status.pre_route else "")
            + " to serve it",
        )
    if (problem := refusal(cascade, served, status.model, status.pre_route)) is not None:
        return Promotion(
            promoted=False,
            reason=PromotionReason.spec_refused,
            at=now,
            message=f"the cascade with tier {tier} on {status.model} would be invalid: {problem}",
        )
    return Promotion(
        promoted=True,
        reason=PromotionReason.promoted,
        previous_model=run.spec.student,
        replaces=served.spec_model,
        at=now,
        message=f"tier {tier}: {run.spec.student} -> {status.model}{shown}"
        + (", with its refitted pre-route score" if status.pre_route else ""),
    )


def refusal(cascade: ModelCascade, served: Serving, model: str, pre_route: PreRoute | None = None) -> str | None:
    """Why the cascade with the student tier on `model` (and `pre_route`) would not validate (the types' rules);
    None: it would."""
    index = tier_index(cascade, served.tier or "")
    assert index is not None
    tiers = list(cascade.spec.tiers)
    tiers[index] = with_promoted(tiers[index], model, pre_route)
    promoted = cascade.model_copy(update={"spec": cascade.spec.model_copy(update={"tiers": tiers})})
    document = promoted.model_dump(mode="json", by_alias=True, exclude_unset=True)
    try:
        ModelCascade.model_validate(document)
    except ValidationError as error:
        return "; ".join(validation_problems(error))
    return None
