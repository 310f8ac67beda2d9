"""`kascade eval`: every confidence method's cost–quality curve on a dataset, with the baselines beside them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from kascade.api.modelcascade import ConfidenceMethod, ModelCascade, ScoredSpan, Task
from kascade.calibration.bounds import interval
from kascade.evaluation import analysis, curves
from kascade.evaluation.commands import EvalInputs, prepare, spans_for
from kascade.evaluation.goals import resolve_goals
from kascade.evaluation.judging import JudgedPair
from kascade.evaluation.report import plot, print_table, report_json, write_json
from kascade.evaluation.scoring import FIXED_CLASS_METHODS, FIXED_TOKEN_METHODS, ScoreMethod, score_answers


def methods_of(cascade: ModelCascade, spans: Sequence[ScoredSpan]) -> list[ScoreMethod]:
    """The fixed methods over every span; the learned score is added per span by `run_eval`."""
    if cascade.spec.task is Task.classify:
        return [ScoreMethod(method) for method in FIXED_CLASS_METHODS]
    return [ScoreMethod(method, span=span) for span in spans for method in FIXED_TOKEN_METHODS]


def method_reports(
    pair: JudgedPair,
    cascade: ModelCascade,
    spans: Sequence[ScoredSpan],
    *,
    goals,
    confidence: float,
    splits: int,
    seed: int,
    console: Console,
) -> list[analysis.MethodReport]:
    reports = []
    with console.status("scoring and sweeping thresholds") as status:
        for method in methods_of(cascade, spans):
            status.update(f"method {method.label}")
            report = analysis.report_method(
                pair, method.label, method, score_answers(method, pair.examples, pair.small)
            )
            report.held_out = analysis.split_study(
                pair, method, goals=goals, confidence=confidence, splits=splits, seed=seed
            )
            reports.append(report)
        for span in spans:
            learned = ScoreMethod(ConfidenceMethod.learned, span=span)
            status.update(f"method {learned.label} (cross-fitted)")
            scores = analysis.cross_fitted_learned(pair, span, seed=seed)
            report = analysis.report_method(pair, f"{learned.label} (cross-fitted)", None, scores)
            report.method = learned
            report.held_out = analysis.split_study(
                pair, learned, goals=goals, confidence=confidence, splits=splits, seed=seed
            )
            reports.append(report)
    return reports


def _manifest_rule(method: str, threshold: float, point: curves.CurvePoint) -> dict[str, object]:
    figures = ("small_share", "agreement", "accuracy", "saving")
    return {"method": method, "threshold": threshold, "point": {name: getattr(point, name) for name in figures}}


def run_eval(
    inputs: EvalInputs,
    *,
    spans: Sequence[str] | None,
    goals: Sequence[str],
    confidence: float | None,
    splits: int,
    out: Path,
    console: Console,
) -> int:
    cascade, dataset, pair = prepare(inputs, console)
    goal_list, confidence_level = resolve_goals(goals, cascade.spec.calibration, confidence)
    chosen_spans = spans_for(cascade, spans)
    reports = method_reports(
        pair,
        cascade,
        chosen_spans,
        goals=goal_list,
        confidence=confidence_level,
        splits=splits,
        seed=inputs.seed,
        console=console,
    )
    reports.sort(key=lambda r: r.area, reverse=True)
    reports += analysis.baselines(pair)
    title = f"{cascade.metadata.name} on {dataset.name} ({len(pair.examples)} examples)"
    print_table(console, pair, reports, title)
    accept = cascade.spec.tiers[0].accept
    assert accept is not None
    manifest_method = ScoreMethod(accept.method, accept.span, accept.quantile, accept.learned)
    manifest_point = curves.at_threshold(
        pair.with_scores(score_answers(manifest_method, pair.examples, pair.small)), accept.threshold
    )
    meta = {
        "cascade": cascade.metadata.name,
        "dataset": dataset.name,
        "limit": inputs.limit,
        "seed": inputs.seed,
        "goals": [str(g) for g in goal_list],
        "confidence": confidence_level,
        "splits": splits,
        "manifest_rule": _manifest_rule(manifest_method.label, accept.threshold, manifest_point),
    }
    write_json(out / "report.json", report_json(pair, reports, meta))
    plot(
        out / "curves.png",
        pair,
        reports,
        title,
        (f"manifest: {manifest_method.label} ≥ {accept.threshold:g}", manifest_point),
    )
    _summary(console, pair, manifest_method.label, accept.threshold, manifest_point, out)
    return 0


def _summary(
    console: Console, pair: JudgedPair, label: str, threshold: float, point: curves.CurvePoint, out: Path
) -> None:
    n = len(pair.examples)
    small = [c for c in pair.small_correct if c is not None]
    last = [c for c in pair.last_correct if c is not None]

    def rate(events: int, trials: int) -> str:
        low, high = interval(events, trials)
        return f"{events / trials:.1%} [{low:.1%}, {high:.1%}]"

    if small and last:
        console.print(
            f"accuracy alone: small tier {rate(sum(small), len(small))}, last tier {rate(sum(last), len(last))}; "
            f"they agree on {rate(sum(pair.agrees), n)} (95% Clopper–Pearson intervals)"
        )
    else:
        console.print(f"the tiers agree on {rate(sum(pair.agrees), n)} of {n} examples (95% Clopper–Pearson interval)")
    quality = f"accuracy {point.accuracy:.1%}" if point.accuracy is not None else f"agreement {point.agreement:.1%}"
    console.print(
        f"the manifest's rule ({label} ≥ {threshold:g}): small tier answers {point.small_share:.1%}, "
        f"{quality}, saving {point.saving:.1%} against the last tier alone"
    )
    console.print(f"wrote {out / 'report.json'} and {out / 'curves.png'}")
