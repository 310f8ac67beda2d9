"""A run's refit of the student tier's pre-route score, from the escalation log, for the new student.

What the score predicts is whether the tier keeps a request (its accept rule
accepts the answer). The log says so per request, by the tier's name in each
record's answers (`kept_by`):
- an escalation record whose answers include the tier's: declined (every
  escalation is logged: the declined class);
- a shadow record (a drawn share of the requests a tier before the last
  accepted, also asked of the last tier) whose last answer is the tier's: kept;
  one whose earlier answers include the tier's: declined.
So the kept class is a uniform sample of the requests the tier keeps, which is
what the bound on kept requests skipped needs; the declined class is all of
them (the fit's intercept leans towards declining, and skipBelow, chosen on
the kept alone, corrects for it).

The labels are the decisions of the student that served when the log was
written: the run does not score the new student's own accept decisions (that
needs the tier's accept rule and threshold, which a run does not carry).

The score is fitted and its skipBelow chosen by `kascade calibrate`'s own
functions (`kascade.evaluation.pre_route_fit.fit_pre_route`): fitted on one
half of the labelled prompts and skipBelow chosen on the other, never fitted
on, by the fixed-sequence bound at the run's confidence (a stable hash of
each record's id splits them, so a rerun splits alike). A refit whose bound
cannot be certified within `max_kept_skipped` is not written: the tier keeps
its own preRoute, and the gate's verdict says why (`PreRouteRefit.message`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from kascade.api.distill_settings import DistillSettings
from kascade.api.escalation_record import EscalationRecord, RecordKind
from kascade.calibration.prompt_text import request_text
from kascade.distillation.result import PreRouteRefit


def kept_by(record: EscalationRecord, tier: str) -> bool | None:
    """Whether `tier` kept the record's request; None when the tier gave no answer to it."""
    answered = [answer.model.tier for answer in record.declined]
    if tier not in answered:
        return None
    return record.kind is RecordKind.shadow and answered[-1] == tier


def labelled_prompts(records: Iterable[EscalationRecord], tier: str) -> tuple[list[str], list[str], list[bool]]:
    """(record ids, prompt texts, kept) of the records the tier answered."""
    ids, texts, kept = [], [], []
    for record in records:
        label = kept_by(record, tier)
        if label is None:
            continue
        try:
            body = json.loads(record.request)
        except json.JSONDecodeError:
            continue  # a request the log could not keep whole (cut by redaction) has no prompt to learn from
        ids.append(record.id)
        texts.append(request_text(body) if isinstance(body, dict) else "")
        kept.append(label)
    return ids, texts, kept


def refit_pre_route(
    settings: DistillSettings, records: Sequence[EscalationRecord], *, source: str
) -> PreRouteRefit | None:
    """The refitted score of `settings.pre_route_tier` (None when the run refits none)."""
    tier = settings.pre_route_tier
    if tier is None:
        return None
    ids, texts, kept = labelled_prompts(records, tier)
    if not ids:
        return PreRouteRefit(
            tier=tier,
            message=f"no record of the log holds an answer of tier {tier}: nothing to refit its pre-route score on",
        )
    try:
        from kascade.evaluation.pre_route_fit import KeptPrompts, fit_pre_route, split_fit_and_choice
    except ImportError as error:  # scikit-learn: the `eval` extra
        return PreRouteRefit(tier=tier, message=f"the pre-route score cannot be fitted here: {error}")
    data = KeptPrompts(tuple(texts), tuple(kept))
    fit_on, chosen_on = split_fit_and_choice(ids)
    if not fit_on or not chosen_on:
        return PreRouteRefit(
            tier=tier,
            message=f"{len(ids)} prompts of tier {tier} are too few to fit on one part and certify on another",
        )
    options: dict[str, Any] = {"dimensions": settings.pre_route_dimensions} if settings.pre_route_dimensions else {}
    fitted = fit_pre_route(
        data.part(fit_on),
        data.part(chosen_on),
        max_kept_skipped=settings.max_kept_skipped,
        confidence=settings.confidence,
        source=source,
        **options,
    )
    choice = fitted.choice
    counts = dict(fitted_on=len(fit_on), certified_on=len(chosen_on), kept=choice.kept)
    if not choice.certified or choice.bound > settings.max_kept_skipped:
        why = choice.reason or f"its bound {choice.bound:.4f} exceeds maxKeptSkipped {settings.max_kept_skipped:g}"
        return PreRouteRefit(tier=tier, **counts, message=f"the refitted pre-route score is not written: {why}")
    return PreRouteRefit(
        tier=tier,
        pre_route=fitted.pre_route,
        **counts,
        message=(
            f"pre-route score refitted on {len(fit_on)} prompts: skipBelow {choice.skip_below:g} skips "
            f"{choice.skipped_share:.1%} of {len(chosen_on)} held-out prompts, kept ones skipped at most "
            f"{choice.bound:.4f} (certified at {settings.confidence:.0%}; maxKeptSkipped {settings.max_kept_skipped:g})"
        ),
    )


def refit_from_log(settings: DistillSettings) -> PreRouteRefit | None:
    """The refit of a run whose data is an escalation log (a dataset holds no tier decisions); None: none asked."""
    tier = settings.pre_route_tier
    if tier is None:
        return None
    if settings.data.endswith(".jsonl"):
        return PreRouteRefit(
            tier=tier, message="a dataset holds no decisions of the tier: a pre-route score is refitted from a log"
        )
    from kascade.runtime.escalation.segments import SegmentStore

    records = list(SegmentStore(settings.data).records())
    return refit_pre_route(settings, records, source=f"kascade distill from {settings.data}"[:253])
