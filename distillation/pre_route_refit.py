"""A run's refit of the student tier's pre-route score, from the escalation log, for the new student.

What the score predicts is whether the tier keeps a request (its accept rule
accepts the answer). The log says so per request, by the tier's name in each
record's answers (`kept_by`):
- an escalation record whose answers include the tier's: declined;
- a shadow record (a drawn share r, online calibration's shadowSampleRate, of
  the requests a tier before the last accepted, also asked of the last tier)
  whose last answer is the tier's: kept; one whose earlier answers include
  the tier's: declined;
- a probe record (a request routed past the tier on its pre-route score,
  the tier asked off the response path): the tier's own decision on it.

The kept class must be a uniform sample of the requests the tier keeps,
across the whole score range: the bound on kept requests skipped is a
share of them. So it is the shadow records and the probes drawn for
calibration with a verdict, both drawn at the same rate r and kept under the
same condition (a verdict), the ones above the serving skipBelow and the
ones below it (`in_calibration_sample`). A kept probe of the record draw
(rate probeRate − r, taken only below skipBelow) would over-represent the
skipped region and is left out. Without probes (a log written while the tier
was skipped, or a router without them) the kept class misses every request
the serving score skipped; a refit certified on it would skip more of the
kept requests than it says, since those are the prompts a score learned from
the same data ranks lowest.

The declined class is every declined record: all the escalations (above the
serving skipBelow, rate 1), the shadow records the tier declined (rate r)
and the declined probes of both draws (below it, at probeRate or r, where
larger). That mixture over-represents the declined requests the serving
score let through: it shapes the fit (its intercept leans towards
declining, and the skipped region weighs less in its weights, so the ranking,
and with it what skipBelow saves, can be a little worse than a uniform
sample's) and nothing else: skipBelow and its bound are read on the kept
class alone. The skipped share in the message is a share of the labelled
prompts, not of traffic.

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
from kascade.api.escalation_record import EscalationRecord, ProbeDraw, RecordKind
from kascade.calibration.prompt_text import request_text
from kascade.distillation.result import PreRouteRefit


def kept_by(record: EscalationRecord, tier: str) -> bool | None:
    """Whether `tier` kept the record's request; None when the tier gave no answer to it."""
    answered = [answer.model.tier for answer in record.declined]
    if tier not in answered:
        return None
    if record.probe is not None:
        return record.probe.kept
    return record.kind is RecordKind.shadow and answered[-1] == tier


def in_calibration_sample(record: EscalationRecord) -> bool:
    """Whether the record is one of online calibration's uniform draws at rate r, kept with a verdict: a shadow
    record, or a probe drawn for calibration whose pair was judged."""
    if record.probe is not None:
        return record.probe.draw is ProbeDraw.calibration and record.agreed is not None
    return record.kind is RecordKind.shadow


def refit_label(record: EscalationRecord, tier: str) -> bool | None:
    """The record's label in the refit (see the module's docstring): kept only from the calibration draws,
    declined from every record; None when the tier gave no answer or a kept answer outside those draws."""
    kept = kept_by(record, tier)
    if kept and not in_calibration_sample(record):
        return None
    return kept


def labelled_prompts(records: Iterable[EscalationRecord], tier: str) -> tuple[list[str], list[str], list[bool]]:
    """(record ids, prompt texts, kept) of the records the refit labels for the tier (`refit_label`)."""
    ids, texts, kept = [], [], []
    for record in records:
        label = refit_label(record, tier)
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
