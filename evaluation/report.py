"""An evaluation's outputs: the terminal table, the JSON report and the PNG of the cost–quality curves."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kascade.evaluation.analysis import QUALITY_SHARE, MethodReport
from kascade.evaluation.curves import CurvePoint, quality
from kascade.evaluation.judging import JudgedPair


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def print_table(console: Console, pair: JudgedPair, reports: Sequence[MethodReport], title: str) -> None:
    quality_name = "accuracy" if pair.labelled else "agreement"
    table = Table(
        title=title,
        caption=(
            f"matcher — {pair.matcher}; quality = {quality_name}. kept: share answered by the small tier at the best "
            f"threshold for ≥ {QUALITY_SHARE:.0%} of the last tier's quality, in sample; held-out kept / ≥99% held: "
            "that threshold chosen on one random half, measured on the other (median over splits, share of splits "
            "where ≥99% held); bound kept / bound quality / ≥99% held / goal held: the same with the threshold from the "
            "goal's bound (quality as a share of the last tier's alone, median), and the share of splits where the goal held"
        ),
    )
    for column in (
        "method",
        "AUC",
        "AUROC",
        "Brier",
        "ECE",
        "kept",
        "held-out kept (min–max)",
        "≥99% held",
        "bound kept",
        "bound quality",
        "≥99% held ",
        "goal held",
    ):
        table.add_column(column, justify="left" if column == "method" else "right", no_wrap=True)
    for report in reports:
        held = report.held_out.get("point_estimate") or {}
        bound = report.held_out.get("bound") or {}
        table.add_row(
            report.label,
            _num(report.area),
            _num(report.auroc),
            _num(report.brier),
            _num(report.ece),
            _pct(report.best_at_target.small_share if report.best_at_target else None),
            f"{_pct(held.get('small_share_median'))} ({_pct(held.get('small_share_min'))}–{_pct(held.get('small_share_max'))})"
            if held
            else "–",
            _pct(held.get("met_share")) if held else "–",
            _pct(bound.get("small_share_median")) if bound else "–",
            _pct(bound.get("quality_ratio_median")) if bound else "–",
            _pct(bound.get("quality_met_share")) if bound else "–",
            _pct(bound.get("met_share")) if bound else "–",
        )
    console.print(table)


def _point_json(point: CurvePoint | None) -> dict[str, Any] | None:
    if point is None:
        return None
    return {
        "threshold": None if math.isinf(point.threshold) or math.isnan(point.threshold) else point.threshold,
        "small_share": point.small_share,
        "agreement": point.agreement,
        "accuracy": point.accuracy,
        "cost": point.cost,
        "saving": point.saving,
    }


def report_json(pair: JudgedPair, reports: Sequence[MethodReport], meta: dict[str, Any]) -> dict[str, Any]:
    n = len(pair.examples)
    return {
        **meta,
        "examples": n,
        "matcher": pair.matcher,
        "small_tier": {"accuracy": _share(pair.small_correct), "mean_cost": sum(pair.small_cost) / n},
        "last_tier": {"accuracy": _share(pair.last_correct), "mean_cost": sum(pair.last_cost) / n},
        "agreement_of_tiers": sum(pair.agrees) / n,
        "methods": [
            {
                "method": r.label,
                "rule": r.method.describe() if r.method is not None else None,
                "area": r.area,
                "auroc": r.auroc,
                "brier": r.brier,
                "ece": r.ece,
                "best_at_target": _point_json(r.best_at_target),
                "held_out": r.held_out,
                "curve": [_point_json(p) for p in _thinned(r.points)],
            }
            for r in reports
        ],
    }


def _thinned(points: Sequence[CurvePoint], most: int = 201) -> list[CurvePoint]:
    """At most `most` points of a curve, spread evenly along it, both ends kept (the cached answers hold the rest)."""
    if len(points) <= most:
        return list(points)
    step = (len(points) - 1) / (most - 1)
    return [points[round(i * step)] for i in range(most)]


def _share(flags: Sequence[bool | None]) -> float | None:
    known = [f for f in flags if f is not None]
    return sum(known) / len(known) if known else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, allow_nan=False, default=_no_nan) + "\n")


def _no_nan(value: Any) -> Any:
    raise TypeError(f"not JSON: {value!r}")


def plot(
    path: Path,
    pair: JudgedPair,
    reports: Sequence[MethodReport],
    title: str,
    operating_point: tuple[str, CurvePoint] | None = None,
) -> None:
    """Quality against cost relative to the last tier alone, one line per method and baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5), dpi=110)
    for report in reports:
        style: dict[str, Any] = {"linestyle": "--", "color": "black"} if report.method is None else {}
        if report.label.startswith("random"):
            style = {"linestyle": ":", "color": "grey"}
        xs = [1.0 - p.saving for p in report.points]
        axes.plot(
            xs,
            [quality(p) for p in report.points],
            label=f"{report.label} (AUC {report.area:.3f})",
            linewidth=1.2,
            **style,
        )
    if operating_point is not None:
        label, point = operating_point
        axes.plot(
            [1.0 - point.saving],
            [quality(point)],
            marker="o",
            markersize=9,
            color="red",
            linestyle="none",
            label=f"chosen: {label}",
        )
    axes.set_xlabel("cost relative to the last tier alone")
    axes.set_ylabel("accuracy" if pair.labelled else "agreement with the last tier")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
