"""Online calibration on real answers: does the loop reach the goal on live traffic, and what do its samples cost?

The MiniLM → mpnet cascade on the tweets (bench/eval/tweets-encoders.yaml),
with both tiers' real answers to the 2,000 held-out tweets of the flywheel
(cached by bench/flywheel_classify.py; nothing is generated here). Traffic is
drawn from them with replacement, in steps of `--per-step` requests; each
request is measured with probability `--rate` (an accepted one costs a shadow
call to mpnet, an escalated one nothing), and after each step the operator's
step (`kascade.calibration.online.calibrate_tiers`) moves the threshold,
starting from `--start`. For every run: the agreement with mpnet the cascade
actually delivered on the second half of the traffic (its steady state), the share
kept on MiniLM, and the shadow calls spent, beside two fixed thresholds in the
same traffic: the manifest's (calibrated offline on tweets:test by
`kascade calibrate`) and the best one in hindsight (the lowest bin edge whose
agreement on all 2,000 tweets meets the goal; not knowable in advance).
Median (min–max) over `--runs` seeds.

    python bench/online_calibration.py     # ~1 min; the answers of bench/flywheel_classify.py must be cached
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kascade.api.counters import CounterFigures
from kascade.api.loop import Calibration
from kascade.calibration.online import BIN_EDGES, bin_key, calibrate_tiers, window_samples_of
from kascade.evaluation.commands import EvalInputs, prepare
from kascade.evaluation.scoring import ScoreMethod, score_answers

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "bench/eval/tweets-encoders.yaml"
FLYWHEEL = REPO / "bench/results/flywheel/tweets"


def delivered(
    scores: list[float], agrees: list[bool], picks: list[int], thresholds: list[float]
) -> tuple[float, float]:
    """(agreement with the large tier, share kept on the small one) of the requests `picks` at `thresholds`."""
    kept = [scores[i] >= t for i, t in zip(picks, thresholds, strict=True)]
    disagreed = sum(k and not agrees[i] for i, k in zip(picks, kept, strict=True))
    return 1 - disagreed / len(picks), sum(kept) / len(picks)


def run_online(
    scores: list[float],
    agrees: list[bool],
    calibration: Calibration,
    *,
    start: float,
    steps: int,
    per_step: int,
    seed: int,
) -> dict[str, float]:
    rng = random.Random(seed)
    samples: dict[str, int] = {}
    agreed: dict[str, int] = {}
    status, threshold, moved_at = None, start, None
    picks, in_force, shadow_calls = [], [], 0
    for step in range(steps):
        for _ in range(per_step):
            i = rng.randrange(len(scores))
            picks.append(i)
            in_force.append(threshold)
            if rng.random() < calibration.shadow_sample_rate:
                key = bin_key("small", scores[i])
                samples[key] = samples.get(key, 0) + 1
                agreed[key] = agreed.get(key, 0) + agrees[i]
                shadow_calls += scores[i] >= threshold  # an escalated request has the large answer already
        figures = CounterFigures(calibration_samples=dict(samples), calibration_agreed=dict(agreed))
        status = calibrate_tiers(
            calibration, {"small": start}, figures, status, now=str(step), window_samples=window_samples_of(calibration)
        )
        if status.tiers[0].threshold != threshold and moved_at is None:
            moved_at = len(picks)
        threshold = status.tiers[0].threshold
    settled = slice(len(picks) // 2, None)  # the second half of the traffic: the loop's steady state
    agreement, kept = delivered(scores, agrees, picks[settled], in_force[settled])
    return {
        "agreement": agreement,
        "kept": kept,
        "shadow_per_1000": 1000 * shadow_calls / len(picks),
        "final": threshold,
        "first_move": moved_at if moved_at is not None else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--goal", type=float, default=0.9, help="minAgreement")
    parser.add_argument("--rate", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--start", type=float, default=0.95, help="the spec's threshold: where the loop starts")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--per-step", type=int, default=1000, help="requests between two operator steps")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    console = Console(width=200)
    inputs = EvalInputs(
        manifest=MANIFEST, data=str(FLYWHEEL / "held-out.jsonl"), answers_dir=FLYWHEEL / "answers", cached_only=True
    )
    cascade, _, pair = prepare(inputs, console)
    accept = cascade.spec.tiers[0].accept
    assert accept is not None
    scores = score_answers(ScoreMethod(accept.method), pair.examples, pair.small)
    agrees = list(pair.agrees)
    everything = list(range(len(scores)))
    table = Table(
        title=f"online calibration, minAgreement={args.goal} at 95%, tweets (MiniLM → mpnet), "
        f"{args.steps} × {args.per_step} requests, {args.runs} runs"
    )
    for column in (
        "threshold",
        "agreement delivered",
        "kept on MiniLM",
        "shadow calls / 1000 req",
        "final threshold",
        "first move after (requests)",
    ):
        table.add_column(column)
    for label, fixed in (
        ("offline (manifest)", accept.threshold),
        (
            "best in hindsight",
            min(
                (e for e in BIN_EDGES if delivered(scores, agrees, everything, [e] * len(scores))[0] >= args.goal),
                default=1.0,
            ),
        ),
    ):
        agreement, kept = delivered(scores, agrees, everything, [fixed] * len(scores))
        table.add_row(f"{label} {fixed:g}", f"{agreement:.3f}", f"{kept:.1%}", "0", "—", "—")
    for rate in args.rate:
        calibration = Calibration(min_agreement=args.goal, shadow_sample_rate=rate)
        runs = [
            run_online(
                scores, agrees, calibration, start=args.start, steps=args.steps, per_step=args.per_step, seed=seed
            )
            for seed in range(args.runs)
        ]

        def spread(key: str, fmt: str, runs: list = runs) -> str:
            values = [r[key] for r in runs]
            return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"

        table.add_row(
            f"online, rate {rate:g}",
            spread("agreement", ".3f"),
            spread("kept", ".1%"),
            spread("shadow_per_1000", ".0f"),
            spread("final", "g"),
            spread("first_move", ".0f"),
        )
    console.print(table)
    console.print(
        "agreement delivered and kept: on the second half of the traffic (online), on all 2,000 tweets "
        "(fixed); shadow calls: accepted requests measured, per 1,000 requests"
    )


if __name__ == "__main__":
    main()
