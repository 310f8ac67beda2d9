"""`kascade calibrate`: the first tier's threshold from a declared goal, with a finite-sample guarantee.

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
from kascade.evaluation.manifest_edit import write_accept
from kascade.evaluation.scoring import ScoreMethod, fit_learned, score_answers


@dataclass(frozen=True)
class Calibrated:
    accept: Accept | None
    selection: Selection
    held_out: curves.CurvePoint | None
    held_out_size: int


def calibrate_pair(
    pair: JudgedPair, method: ScoreMethod, goals, confidence: float, held_out_share: float
) -> Calibrated:
    """Choose the threshold on the calibration part (fitting the learned score first), measure it on the held-out part.

    The learned score predicts what the goals are about: correctness for a minAccuracy goal, else agreement.
    """
    n = len(pair.examples)
    held = [i for i in range(n) if stable_fraction("held-out:" + pair.examples[i].id) < held_out_share]
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
    for goal in result.selection.results:
        certified = "none" if goal.threshold is None else f"{goal.threshold:.4g}"
        console.print(
            f"goal {goal.goal} at {level:.0%} confidence (tested at error level {goal.delta:.3g}): "
            f"boldest certified threshold {certified}; {goal.events} loss events of {result.selection.trials}, "
            f"upper bound {goal.bound:.4f} (allowed {goal.goal.allowed_rate:.4g})"
        )
    if result.accept is None:
        console.print(f"[red]no threshold meets {goals_text} on this data:[/red] {result.selection.reason}")
        return 1
    console.print(f"tier {tier.name}: method {chosen.label}, threshold [bold]{result.accept.threshold:.4g}[/bold]")
    _print_held_out(console, pair, result)
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
    return 0


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
