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

Chat mode (`chat`): the local demo's pair (SmolLM2-135M → Qwen2.5-Coder-0.5B,
runtime/local/demo.yaml) on its cached answers to the 110 prompts of
bench/eval/chat-prompts.jsonl (bench/results/demo/answers), replayed the same
way from the manifest's threshold, once per matcher: exact, semantic (the
router's ONNX MiniLM at `SEMANTIC_CUTOFF`, and at 0.8, the cutoff before it was measured) and judge (the pair's last tier, the
0.5B; with `--judge-1.5b` also the Qwen 1.5B). Judge verdicts are computed
once and cached in bench/results/online-calibration/verdicts. Beside each run:
the share kept in the first 500 requests (what a user trying the loop sees),
judge calls and their cost per 1,000 requests (the judge's prompt tokens at
the last tier's price; the 1.5B at 3x it).

    python bench/online_calibration.py chat --judge-1.5b                 # defaults: minSamples 200
    python bench/online_calibration.py chat --judge-1.5b --min-samples 20 --rate 0.5   # the trial of the issue
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kascade.api.agreement import SEMANTIC_CUTOFF
from kascade.api.counters import CounterFigures
from kascade.api.loop import Calibration
from kascade.calibration.online import BIN_EDGES, bin_key, calibrate_tiers, window_samples_of
from kascade.evaluation.commands import EvalInputs, prepare
from kascade.evaluation.judge_answers import judge_for, question_of
from kascade.evaluation.judging import call_cost
from kascade.evaluation.scoring import ScoreMethod, score_answers
from kascade.runtime.local.manifest import load_manifest
from kascade.runtime.models.encoder import SentenceEncoder, ensure_onnx_encoder

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "bench/eval/tweets-encoders.yaml"
FLYWHEEL = REPO / "bench/results/flywheel/tweets"
DEMO = REPO / "runtime/local/demo.yaml"
CHAT_PROMPTS = REPO / "bench/eval/chat-prompts.jsonl"
JUDGE_PAIR = REPO / "bench/eval/qwen-coder-pair.yaml"  # its last tier, the 1.5B: a second judge for the demo pair
OUT = REPO / "bench/results/online-calibration"
EARLY = 500  # the first requests, where a user trying the loop looks
LARGE_JUDGE_PRICE_RATIO = (
    3.0  # the 1.5B priced at 3x the 0.5B, the parameter ratio bench/eval/qwen-coder-pair.yaml uses
)


@dataclass(frozen=True)
class Costs:
    """Each request's call to the small and to the last tier, and one judgement (0 for a matcher with no calls)."""

    small: list[float]
    last: list[float]
    judge_per_call: float = 0.0


@dataclass(frozen=True)
class Judged:
    """One matcher's agreement on each prompt (None: not judged), and what one judgement costs."""

    label: str
    agrees: list[bool | None]
    cost_per_call: float = 0.0
    prompt_tokens: float = 0.0


def delivered(
    scores: list[float], agrees: Sequence[bool | None], picks: list[int], thresholds: list[float]
) -> tuple[float, float]:
    """(agreement with the large tier, share kept on the small one) of the requests `picks` at `thresholds`.

    A pair the matcher could not judge (None) counts as a disagreement."""
    kept = [scores[i] >= t for i, t in zip(picks, thresholds, strict=True)]
    disagreed = sum(k and not agrees[i] for i, k in zip(picks, kept, strict=True))
    return 1 - disagreed / len(picks), sum(kept) / len(picks)


def run_online(
    scores: list[float],
    agrees: Sequence[bool | None],
    calibration: Calibration,
    *,
    start: float,
    steps: int,
    per_step: int,
    seed: int,
    costs: Costs | None = None,
) -> dict[str, float]:
    rng = random.Random(seed)
    spent = alone = 0.0  # the cascade's cost (small call, escalation, shadow call, judge call) and the last tier's
    samples: dict[str, int] = {}
    agreed: dict[str, int] = {}
    status, threshold, moved_at = None, start, None
    picks, in_force, shadow_calls, measured = [], [], 0, 0
    for step in range(steps):
        for _ in range(per_step):
            i = rng.randrange(len(scores))
            picks.append(i)
            in_force.append(threshold)
            drawn = rng.random() < calibration.shadow_sample_rate
            if costs is not None and len(picks) > steps * per_step // 2:  # the steady state, as agreement and kept
                asks_last = scores[i] < threshold or drawn
                spent += costs.small[i] + asks_last * costs.last[i] + drawn * costs.judge_per_call
                alone += costs.last[i]
            if drawn:
                measured += 1  # one judgement (a judge call, for matcher judge)
                shadow_calls += scores[i] >= threshold  # an escalated request has the large answer already
                if agrees[i] is None:
                    continue  # not judged: the sample is lost, as the router loses it
                key = bin_key("small", scores[i])
                samples[key] = samples.get(key, 0) + 1
                agreed[key] = agreed.get(key, 0) + bool(agrees[i])
        figures = CounterFigures(calibration_samples=dict(samples), calibration_agreed=dict(agreed))
        status = calibrate_tiers(
            calibration, {"small": start}, figures, status, now=str(step), window_samples=window_samples_of(calibration)
        )
        if status.tiers[0].threshold != threshold and moved_at is None:
            moved_at = len(picks)
        threshold = status.tiers[0].threshold
    settled = slice(len(picks) // 2, None)  # the second half of the traffic: the loop's steady state
    agreement, kept = delivered(scores, agrees, picks[settled], in_force[settled])
    _, kept_early = delivered(scores, agrees, picks[:EARLY], in_force[:EARLY])
    return {
        "agreement": agreement,
        "kept": kept,
        "kept_early": kept_early,
        "at_safest": sum(t >= calibration.max_threshold for t in in_force) / len(in_force),
        "shadow_per_1000": 1000 * shadow_calls / len(picks),
        "measured_per_1000": 1000 * measured / len(picks),
        "cost_vs_last": spent / alone if alone else float("nan"),
        "final": threshold,
        "first_move": moved_at if moved_at is not None else float("nan"),
    }


def _spread(runs: list[dict[str, float]], key: str, fmt: str) -> str:
    values = [r[key] for r in runs]
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def best_in_hindsight(scores: list[float], agrees: Sequence[bool | None], goal: float) -> float:
    """The lowest bin edge whose agreement over every request meets the goal (not knowable in advance)."""
    everything = list(range(len(scores)))
    return min(
        (e for e in BIN_EDGES if delivered(scores, agrees, everything, [e] * len(scores))[0] >= goal), default=1.0
    )


def tweets(args: argparse.Namespace, console: Console) -> None:
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
        ("best in hindsight", best_in_hindsight(scores, agrees, args.goal)),
    ):
        agreement, kept = delivered(scores, agrees, everything, [fixed] * len(scores))
        table.add_row(f"{label} {fixed:g}", f"{agreement:.3f}", f"{kept:.1%}", "0", "—", "—")
    for rate in args.rate or [0.02, 0.05, 0.1]:
        calibration = Calibration(min_agreement=args.goal, shadow_sample_rate=rate, min_samples=args.min_samples)
        runs = [
            run_online(
                scores, agrees, calibration, start=args.start, steps=args.steps, per_step=args.per_step, seed=seed
            )
            for seed in range(args.runs)
        ]
        table.add_row(
            f"online, rate {rate:g}",
            _spread(runs, "agreement", ".3f"),
            _spread(runs, "kept", ".1%"),
            _spread(runs, "shadow_per_1000", ".0f"),
            _spread(runs, "final", "g"),
            _spread(runs, "first_move", ".0f"),
        )
    console.print(table)
    console.print(
        "agreement delivered and kept: on the second half of the traffic (online), on all 2,000 tweets "
        "(fixed); shadow calls: accepted requests measured, per 1,000 requests"
    )


def chat_matchers(args: argparse.Namespace, console: Console) -> tuple[list[float], list[Judged], dict[str, Any]]:
    """The demo pair's scores, and each matcher's agreement on its 110 prompts (judge verdicts cached)."""
    inputs = EvalInputs(
        manifest=DEMO,
        data=str(CHAT_PROMPTS),
        match="exact",
        max_tokens=48,
        answers_dir=REPO / "bench/results/demo/answers",
        cached_only=True,
    )
    cascade, _, pair = prepare(inputs, console)
    accept = cascade.spec.tiers[0].accept
    assert accept is not None
    scores = score_answers(ScoreMethod(accept.method), pair.examples, pair.small)
    encoder = SentenceEncoder(ensure_onnx_encoder())
    cosines = encoder.cosines([a.text for a in pair.small], [a.text for a in pair.last])
    matchers = [
        Judged("exact", list(pair.agrees)),
        *(
            Judged(f"semantic >= {cutoff:g}", [c >= cutoff for c in cosines])
            for cutoff in sorted({SEMANTIC_CUTOFF, 0.8})
        ),
    ]
    price = cascade.spec.tiers[-1].price
    questions = [question_of(e, a.text, b.text) for e, a, b in zip(pair.examples, pair.small, pair.last, strict=True)]
    judges = [("judge: the 0.5B (the last tier)", DEMO, 1.0)]
    if args.judge_large:
        judges.append(("judge: the 1.5B", JUDGE_PAIR, LARGE_JUDGE_PRICE_RATIO))
    for label, manifest, ratio in judges:
        judge = judge_for(load_manifest(manifest), verdicts_dir=OUT / "verdicts", batch_size=4)
        verdicts = judge.verdicts(questions)
        agrees = [None if v.probability is None else v.probability >= judge.min_probability for v in verdicts]
        per_call = statistics.mean(
            ratio * (price.input_per_million * v.prompt_tokens + price.output_per_million * v.completion_tokens) / 1e6
            for v in verdicts
        )
        matchers.append(Judged(label, agrees, per_call, statistics.mean(v.prompt_tokens for v in verdicts)))
    small_tier, last_tier = cascade.spec.tiers[0], cascade.spec.tiers[-1]
    small_costs = [call_cost(small_tier.price, a) for a in pair.small]
    last_costs = [call_cost(last_tier.price, a) for a in pair.last]
    facts = {"accept": accept, "last_cost": statistics.mean(last_costs), "price": price}
    return scores, matchers, facts | {"small_costs": small_costs, "last_costs": last_costs}


def chat(args: argparse.Namespace, console: Console) -> None:
    scores, matchers, facts = chat_matchers(args, console)
    everything = list(range(len(scores)))
    rates = args.rate or [0.02, 0.1, 0.5]
    table = Table(
        title=f"online calibration on chat, minAgreement={args.goal} at 95%, minSamples={args.min_samples}, the demo pair (SmolLM2-135M → "
        f"Qwen2.5-Coder-0.5B), 110 prompts replayed, {args.steps} × {args.per_step} requests, {args.runs} runs"
    )
    columns = ("matcher", "threshold", "agreement delivered", "goal held", "kept on SmolLM2", f"kept, first {EARLY}")
    columns += ("requests at threshold 1", "shadow calls / 1000")
    for column in (*columns, "judge calls / 1000", "judge cost / 1000 req", "cost vs last alone", "final threshold"):
        table.add_column(column)
    for matcher in matchers:
        agrees = matcher.agrees
        rate_all = sum(bool(a) for a in agrees) / len(agrees)
        hindsight = best_in_hindsight(scores, agrees, args.goal)
        for label, fixed in (("offline (manifest)", facts["accept"].threshold), ("best in hindsight", hindsight)):
            agreement, kept = delivered(scores, agrees, everything, [fixed] * len(scores))
            held = "yes" if agreement >= args.goal else "no"
            table.add_row(
                f"{matcher.label} (agree on {rate_all:.1%})",
                f"{label} {fixed:g}",
                f"{agreement:.3f}",
                held,
                f"{kept:.1%}",
                "—",
                "—",
                "0",
                "0",
                "0",
                "—",
                "—",
            )
        for rate in rates:
            calibration = Calibration(min_agreement=args.goal, shadow_sample_rate=rate, min_samples=args.min_samples)
            costs = Costs(facts["small_costs"], facts["last_costs"], matcher.cost_per_call)
            runs = [
                run_online(
                    scores,
                    agrees,
                    calibration,
                    start=args.start,
                    steps=args.steps,
                    per_step=args.per_step,
                    seed=seed,
                    costs=costs,
                )
                for seed in range(args.runs)
            ]
            judged_calls = matcher.cost_per_call > 0
            table.add_row(
                matcher.label,
                f"online, rate {rate:g}",
                _spread(runs, "agreement", ".3f"),
                f"{sum(r['agreement'] >= args.goal for r in runs)}/{len(runs)}",
                _spread(runs, "kept", ".1%"),
                _spread(runs, "kept_early", ".1%"),
                _spread(runs, "at_safest", ".1%"),
                _spread(runs, "shadow_per_1000", ".0f"),
                _spread(runs, "measured_per_1000", ".0f") if judged_calls else "0",
                f"${statistics.median(r['measured_per_1000'] for r in runs) * matcher.cost_per_call:.5f}"
                if judged_calls
                else "0",
                _spread(runs, "cost_vs_last", ".3f"),
                _spread(runs, "final", "g"),
            )
    console.print(table)
    price = facts["price"]
    console.print(
        "agreement delivered (as each matcher sees it; a pair the judge could not judge counts as a disagreement) "
        "and kept: on the second half of the traffic (online), on all 110 prompts (fixed). Judge cost: every drawn "
        f"request is judged once, its prompt tokens at the last tier's price (${price.input_per_million:g} in, "
        f"${price.output_per_million:g} out per million; the 1.5B at {LARGE_JUDGE_PRICE_RATIO:g}x that); the last "
        f"tier alone costs ${1000 * facts['last_cost']:.4f} per 1,000 requests. Cost vs last alone: on the second half of the "
        "traffic, every small call, escalation, shadow call and judge call against the last tier alone. Mean judge prompt: "
        + ", ".join(f"{m.label} {m.prompt_tokens:.0f} tokens" for m in matchers if m.cost_per_call > 0)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="tweets", choices=["tweets", "chat"])
    parser.add_argument("--goal", type=float, default=0.9, help="minAgreement")
    parser.add_argument(
        "--rate", type=float, nargs="+", help="shadowSampleRate (tweets 0.02 0.05 0.1, chat 0.02 0.1 0.5)"
    )
    parser.add_argument("--start", type=float, help="the spec's threshold: where the loop starts (default: the mode's)")
    parser.add_argument("--steps", type=int, help="operator steps (tweets 40, chat 100)")
    parser.add_argument("--per-step", type=int, help="requests between two operator steps (tweets 1000, chat 200)")
    parser.add_argument("--min-samples", type=int, default=200, help="minSamples")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--judge-1.5b", dest="judge_large", action="store_true", help="chat: also judge with the 1.5B")
    args = parser.parse_args()
    console = Console(width=200 if args.mode == "tweets" else 260)
    if args.mode == "chat":
        args.start = 0.568 if args.start is None else args.start
        args.per_step = args.per_step or 200
        args.steps = args.steps or 100
        chat(args, console)
    else:
        args.start = 0.95 if args.start is None else args.start
        args.per_step = args.per_step or 1000
        args.steps = args.steps or 40
        tweets(args, console)


if __name__ == "__main__":
    main()
