"""`kascade calibrate`: the first tier's threshold from a declared goal, with a finite-sample guarantee.

With `--pre-route` it also fits the first tier's pre-route score (labels:
the calibrated accept rule's decisions on the tier's cached answers) and
chooses its skipBelow with the same kind of bound (`pre_route_fit`).

The data is split by a stable hash of each example's id: a calibration part
(where the threshold is chosen; for the learned score, its first half fits
the model and its second half chooses the threshold, so the fit does not
spoil the bound) and a held-out part (where what the threshold achieves is
measured, with 95% Clopper–Pearson intervals).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console

from kascade.api.modelcascade import Accept, ConfidenceMethod, ScoredSpan
from kascade.calibration.bounds import interval
from kascade.calibration.selection import GoalKind, Outcome, Selection, select_threshold
from kascade.evaluation import curves
from kascade.evaluation.commands import EvalInputs, prepare
from kascade.evaluation.datasets import stable_fraction
from kascade.evaluation.goals import GoalError, resolve_goals
from kascade.evaluation.judging import JudgedPair
from kascade.evaluation.manifest_edit import write_accept, write_pre_route
from kascade.evaluation.pre_route_fit import (
    FittedPreRoute,
    KeptPrompts,
    PreRouteOptions,
    prompt_texts,
    split_fit_and_choice,
)
from kascade.evaluation.scoring import ScoreMethod, fit_learned, score_answers


@dataclass(frozen=True)
class Calibrated:
    accept: Accept | None
    selection: Selection
    held_out: curves.CurvePoint | None
    held_out_size: int


def held_out_indices(pair: JudgedPair, held_out_share: float) -> list[int]:
    """The examples kept apart to measure the result, by a stable hash of each id."""
    return [i for i, example in enumerate(pair.examples) if stable_fraction("held-out:" + example.id) < held_out_share]


def calibrate_pair(
    pair: JudgedPair, method: ScoreMethod, goals, confidence: float, held_out_share: float
) -> Calibrated:
    """Choose the threshold on the calibration part (fitting the learned score first), measure it on the held-out part.

    The learned score predicts what the goals are about: correctness for a minAccuracy goal, else agreement.
    """
    n = len(pair.examples)
    held = held_out_indices(pair, held_out_share)
    calibration = [i for i in range(n) if i not in set(held)]
    if method.method is ConfidenceMethod.learned:
        fit_part = [i for i in calibration if stable_fraction("fit:" + pair.examples[i].id) < 0.5]
        selection_part = [i for i in calibration if i not in set(fit_part)]
        by_accuracy = any(goal.kind is GoalKind.min_accuracy for goal in goals)
        targets = [bool(c) for c in pair.small_correct] if by_accuracy else list(pair.agrees)
        method = fit_learned(
            [pair.examples[i] for i in fit_part],
            [pair.small[i] for i in fit_part],
            [targets[i] for i in fit_part],
            span=method.span,
            target="correctness" if by_accuracy else "agreement",
        )
    else:
        selection_part = calibration
    scores = score_answers(method, pair.examples, pair.small)
    outcomes = [Outcome(scores[i], pair.agrees[i], pair.small_correct[i], pair.last_correct[i]) for i in selection_part]
    selection = select_threshold(goals, outcomes, confidence=confidence)
    if selection.threshold is None:
        return Calibrated(None, selection, None, len(held))
    accept = method.accept(selection.threshold)
    point = curves.at_threshold(pair.with_scores(scores, held), selection.threshold) if held else None
    return Calibrated(accept, selection, point, len(held))


def run_calibrate(
    inputs: EvalInputs,
    *,
    goals: Sequence[str],
    confidence: float | None,
    method: str | None,
    span: str | None,
    held_out_share: float,
    write: bool,
    console: Console,
    pre_route: PreRouteOptions | None = None,
) -> int:
    cascade, dataset, pair = prepare(inputs, console)
    goal_list, level = resolve_goals(goals, cascade.spec.calibration, confidence)
    if not goal_list:
        raise GoalError("no goal: give --goal (e.g. --goal minAgreement=0.95) or set spec.calibration in the manifest")
    tier = cascade.spec.tiers[0]
    assert tier.accept is not None
    chosen = ScoreMethod(
        ConfidenceMethod(method) if method else tier.accept.method,
        span=ScoredSpan(span) if span else tier.accept.span,
        quantile=tier.accept.quantile,
        learned=tier.accept.learned,
    )
    if chosen.method is ConfidenceMethod.learned:
        chosen = ScoreMethod(ConfidenceMethod.learned, span=chosen.span)  # refitted here
    result = calibrate_pair(pair, chosen, goal_list, level, held_out_share)
    goals_text = ", ".join(str(g) for g in goal_list)
    _print_goals(console, result.selection, level)
    if result.accept is None:
        console.print(f"[red]no threshold meets {goals_text} on this data:[/red] {result.selection.reason}")
        return 1
    console.print(f"tier {tier.name}: method {chosen.label}, threshold [bold]{result.accept.threshold:.4g}[/bold]")
    _print_held_out(console, pair, result)
    fitted = None
    if pre_route is not None:
        source = f"kascade calibrate on {dataset.name}"
        fitted = calibrate_pre_route(
            pair, result.accept, pre_route, confidence=level, held_out_share=held_out_share, source=source
        )
        _print_pre_route(console, tier.name, fitted)
    if write:
        if inputs.manifest is None:
            console.print("[yellow]--write needs -f MANIFEST (the embedded demo is read-only)[/yellow]")
            return 2
        note = (
            f"Set by `kascade calibrate` on {dataset.name} ({len(pair.examples)} examples): goal {goals_text} "
            f"at {level:.0%} confidence; see docs/evaluation.md."
        )
        write_accept(inputs.manifest, tier.name, result.accept, note)
        console.print(f"wrote the accept rule into {inputs.manifest}")
        if fitted is not None and fitted.choice.certified:
            write_pre_route(inputs.manifest, tier.name, fitted.pre_route, _pre_route_note(dataset.name, fitted))
            console.print(f"wrote the pre-route score into {inputs.manifest}")
        elif fitted is not None:
            console.print("no skipBelow certified: the manifest's preRoute is left as it was")
    return 0


def _print_goals(console: Console, selection: Selection, level: float) -> None:
    for goal in selection.results:
        certified = "none" if goal.threshold is None else f"{goal.threshold:.4g}"
        console.print(
            f"goal {goal.goal} at {level:.0%} confidence (tested at error level {goal.delta:.3g}): "
            f"boldest certified threshold {certified}; {goal.events} loss events of {selection.trials}, "
            f"upper bound {goal.bound:.4f} (allowed {goal.goal.allowed_rate:.4g})"
        )


def calibrate_pre_route(
    pair: JudgedPair,
    accept: Accept,
    options: PreRouteOptions,
    *,
    confidence: float,
    held_out_share: float,
    source: str,
) -> FittedPreRoute:
    """The first tier's pre-route score: labels are `accept`'s decisions on the tier's cached answers.

    Fitted on half of the calibration part and skipBelow chosen on the other
    half (by a stable hash of each id), measured on the held-out part."""
    method = ScoreMethod(accept.method, span=accept.span, quantile=accept.quantile, learned=accept.learned)
    scores = score_answers(method, pair.examples, pair.small)
    data = KeptPrompts(prompt_texts(pair.examples), tuple(score >= accept.threshold for score in scores))
    held = held_out_indices(pair, held_out_share)
    apart = set(held)
    calibration = [i for i in range(len(pair.examples)) if i not in apart]
    fit, choose = split_fit_and_choice([pair.examples[i].id for i in calibration])
    return options.fit(
        data.part([calibration[i] for i in fit]),
        data.part([calibration[i] for i in choose]),
        data.part(held) if held else None,
        confidence=confidence,
        source=source,
    )


def _print_pre_route(console: Console, tier_name: str, fitted: FittedPreRoute) -> None:
    rule, choice = fitted.pre_route, fitted.choice
    line = f"tier {tier_name}: pre-route score ({rule.features.value}, {rule.dimensions} dimensions) fitted on "
    console.print(line + f"{rule.fitted.examples if rule.fitted else 0} prompts")
    if not choice.certified:
        console.print(f"[yellow]no skipBelow is certified:[/yellow] {choice.reason}; skipBelow 0 (never skip)")
    else:
        console.print(
            f"skipBelow [bold]{choice.skip_below:.4g}[/bold]: skips {choice.skipped_share:.1%} of {choice.requests} "
            f"prompts it was chosen on; {choice.kept_skipped} of their {choice.kept} kept skipped, upper bound "
            f"{choice.bound:.4f} (allowed maxKeptSkipped={choice.max_kept_skipped:g} at {choice.confidence:.0%})"
        )
    measured = fitted.held_out
    if measured is None:
        return
    auroc = "n/a (one class)" if measured.auroc is None else f"{measured.auroc:.3f}"
    low, high = interval(measured.skipped, measured.requests)
    line = f"held out ({measured.requests} prompts): AUROC {auroc}, skipped {measured.skipped / measured.requests:.1%} "
    line += f"[{low:.1%}, {high:.1%}]"
    if measured.kept:
        share = measured.kept_skipped / measured.kept
        low, high = interval(measured.kept_skipped, measured.kept)
        line += f", kept requests skipped {share:.1%} [{low:.1%}, {high:.1%}] of {measured.kept}"
    console.print(line + " (95% Clopper–Pearson intervals)")


def _pre_route_note(dataset_name: str, fitted: FittedPreRoute) -> str:
    choice = fitted.choice
    return (
        f"Fitted by `kascade calibrate --pre-route` on {dataset_name}: at most maxKeptSkipped="
        f"{choice.max_kept_skipped:g} of the kept requests skipped, at {choice.confidence:.0%} confidence; "
        "see docs/evaluation.md."
    )


def _print_held_out(console: Console, pair: JudgedPair, result: Calibrated) -> None:
    point, n = result.held_out, result.held_out_size
    if point is None or n == 0:
        console.print("no held-out examples: nothing measured beyond the calibration part")
        return
    kept = round(point.small_share * n)
    low, high = interval(kept, n)
    line = f"held out ({n} examples): small tier answers {point.small_share:.1%} [{low:.1%}, {high:.1%}]"
    agree = round(point.agreement * n)
    low, high = interval(agree, n)
    line += f", agreement with the last tier {point.agreement:.1%} [{low:.1%}, {high:.1%}]"
    if point.accuracy is not None:
        right = round(point.accuracy * n)
        low, high = interval(right, n)
        line += f", accuracy {point.accuracy:.1%} [{low:.1%}, {high:.1%}]"
    console.print(line + f", saving {point.saving:.1%} (95% Clopper–Pearson intervals)")
