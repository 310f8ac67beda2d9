"""Matchers against truth: how often exact, number, semantic and judge agreement is true agreement.

Three sets where whether two answers agree is known, each the Qwen2.5-Coder
0.5B (candidate) against the 1.5B (reference), bench/eval/qwen-coder-pair.yaml:

- humaneval: a seeded 30 of the 80 cached problems of docs/evaluation.md
  run 1 (all 80 choose the semantic cutoff); true agreement: both programs
  pass the problem's tests or both fail (the code matcher runs them).
- math: a seeded 200 of the 500 cached questions of run 2 (final number
  only); true agreement: the same final number (the number matcher, the
  definition `minAgreement` uses on this set), and beside it "both right or
  both wrong" against the reference.
- bbc-chat: 50 seeded BBC News articles (their first 300 characters) asked
  as chat with the label list (generated here once, cached in
  bench/results/matchers/answers); true agreement: the same label parsed
  from both answers.

The judge is the pair's last tier, the 1.5B (`kascade.evaluation.judge_answers`,
verdicts cached in bench/results/matchers/verdicts: a rerun asks nothing). The
semantic cutoff is chosen on humaneval only (Youden's J: the highest recall
plus specificity) and reported on the other two. For each set: precision and
recall of each matcher against true agreement, the judge's false-agreement
rate with its bound, and at the threshold certified on judged agreement the
judged and the true agreement delivered.

    python bench/matchers_truth.py --judge-only   # fill the verdict cache (~1.5 h on two shared cores)
    python bench/matchers_truth.py                # the tables (bench/results/matchers/)
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from kascade.api.agreement import AnswerMatcher
from kascade.calibration.agreement import answers_agree, same_text
from kascade.calibration.bounds import upper_bound
from kascade.calibration.judge_error import judged_goal
from kascade.calibration.selection import Goal, GoalKind, Outcome, select_threshold
from kascade.evaluation.commands import EvalInputs, prepare
from kascade.evaluation.datasets import bbc_news, seeded_sample
from kascade.evaluation.judge_answers import AnswerJudge, judge_for, question_of
from kascade.evaluation.records import Example, TierAnswer
from kascade.evaluation.scoring import ScoreMethod, score_answers
from kascade.runtime.local.manifest import load_manifest
from kascade.runtime.models.encoder import SentenceEncoder, ensure_onnx_encoder

REPO = Path(__file__).resolve().parents[1]
PAIR = REPO / "bench/eval/qwen-coder-pair.yaml"
OUT = REPO / "bench/results/matchers"
FORMER_CUTOFF = 0.8
BBC_CHARS = 300
GOALS = (0.9, 0.8)
BBC_LABELS = ("business", "entertainment", "politics", "sport", "tech")
BBC_QUESTION = (
    "Which topic is this news article about? Answer with one word: business, entertainment, politics, sport "
    "or tech.\n\nArticle:\n{text}"
)


@dataclass(frozen=True)
class TruthSet:
    """A set of answer pairs (candidate: the 0.5B, reference: the 1.5B) with their true agreement."""

    name: str
    examples: list[Example]
    small: list[TierAnswer]
    last: list[TierAnswer]
    truth: list[bool]
    truth_rule: str
    other_truth: list[bool] | None = None  # math: both right or both wrong
    other_rule: str = ""


def humaneval(console: Console, limit: int = 30) -> TruthSet:
    inputs = EvalInputs(manifest=PAIR, data="humaneval", limit=80, answers_dir=REPO / "bench/results/humaneval/answers")
    _, _, pair = prepare(inputs, console)
    keep = seeded_sample(range(len(pair.examples)), limit, 0)  # ~600 judge tokens a pair: a seeded 30 of the 80
    return TruthSet(
        "humaneval",
        [pair.examples[i] for i in keep],
        [pair.small[i] for i in keep],
        [pair.last[i] for i in keep],
        [pair.agrees[i] for i in keep],
        "both pass the problem's tests or both fail",
    )


def math(console: Console, limit: int = 200) -> TruthSet:
    inputs = EvalInputs(manifest=PAIR, data="math", answers_dir=REPO / "bench/results/math/answers", cached_only=True)
    _, _, pair = prepare(inputs, console)
    keep = seeded_sample(range(len(pair.examples)), limit, 0)
    return TruthSet(
        "math",
        [pair.examples[i] for i in keep],
        [pair.small[i] for i in keep],
        [pair.last[i] for i in keep],
        [pair.agrees[i] for i in keep],
        "the same final number",
        [pair.small_correct[i] == pair.last_correct[i] for i in keep],
        "both right or both wrong against the reference",
    )


def bbc_chat_file(limit: int = 50) -> Path:
    """50 seeded BBC articles (their first 300 characters) as chat requests with the label list; the label is the
    reference answer. Sized for two shared cores: each is asked of both models and judged by the 1.5B."""
    path = OUT / "bbc-chat.jsonl"
    if not path.is_file():
        chosen = seeded_sample(bbc_news().examples, limit, 0)
        OUT.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as handle:
            for example in chosen:
                text = (example.input or "")[:BBC_CHARS]
                message = {"role": "user", "content": BBC_QUESTION.format(text=text)}
                record = {"id": example.id, "messages": [message], "answer": example.label, "slice": example.label}
                handle.write(json.dumps(record) + "\n")
    return path


def parsed_label(answer: str) -> str | None:
    """The first of the five labels the answer names ("sports" counts as sport); None: it names none."""
    found = [(m.start(), label) for label in BBC_LABELS if (m := re.search(rf"\b{label}", answer.lower()))]
    return min(found)[1] if found else None


def bbc_chat(console: Console) -> TruthSet:
    inputs = EvalInputs(
        manifest=PAIR, data=str(bbc_chat_file()), match="exact", max_tokens=8, answers_dir=OUT / "answers"
    )
    _, _, pair = prepare(inputs, console)
    truth = [parsed_label(a.text) == parsed_label(b.text) for a, b in zip(pair.small, pair.last, strict=True)]
    return TruthSet(
        "bbc-chat",
        list(pair.examples),
        list(pair.small),
        list(pair.last),
        truth,
        "the same label parsed from both answers",
    )


SETS = {"math": math, "bbc-chat": bbc_chat, "humaneval": humaneval}


def judged(truth_set: TruthSet, judge: AnswerJudge) -> list[bool | None]:
    questions = [
        question_of(e, a.text, b.text)
        for e, a, b in zip(truth_set.examples, truth_set.small, truth_set.last, strict=True)
    ]
    return judge.agree(questions)


def semantic_cosines(truth_set: TruthSet, encoder: SentenceEncoder) -> list[float]:
    return encoder.cosines([a.text for a in truth_set.small], [b.text for b in truth_set.last])


def choose_cutoff(cosines: Sequence[float], truth: Sequence[bool]) -> float:
    """The cutoff of the grid 0.50, 0.51 … 0.99 with the highest Youden's J (recall + specificity - 1); ties: higher."""
    positives, negatives = sum(truth), len(truth) - sum(truth)

    def youden(cutoff: float) -> float:
        hits = sum(c >= cutoff and t for c, t in zip(cosines, truth, strict=True))
        false_hits = sum(c >= cutoff and not t for c, t in zip(cosines, truth, strict=True))
        return hits / max(positives, 1) - false_hits / max(negatives, 1)

    grid = [round(0.5 + i / 100, 2) for i in range(50)]
    return max(reversed(grid), key=youden)


@dataclass(frozen=True)
class MatcherFigures:
    """One matcher against true agreement on one set."""

    matcher: str
    said_agree: int
    true_agree: int
    both: int
    pairs: int
    unjudged: int = 0

    @property
    def precision(self) -> float | None:
        return self.both / self.said_agree if self.said_agree else None

    @property
    def recall(self) -> float | None:
        return self.both / self.true_agree if self.true_agree else None

    @property
    def false_agreements(self) -> int:
        return self.said_agree - self.both

    def row(self) -> dict[str, Any]:
        bound = upper_bound(self.false_agreements, self.pairs, 0.025)
        return {
            "matcher": self.matcher,
            "says agree": f"{self.said_agree} ({self.said_agree / self.pairs:.1%})",
            "precision": "—" if self.precision is None else f"{self.precision:.3f}",
            "recall": "—" if self.recall is None else f"{self.recall:.3f}",
            "false agreements": f"{self.false_agreements} ({self.false_agreements / self.pairs:.1%}, ≤ {bound:.1%})",
            "no verdict": str(self.unjudged),
        }


def figures(name: str, said: Sequence[bool | None], truth: Sequence[bool]) -> MatcherFigures:
    agree = [bool(x) for x in said]
    return MatcherFigures(
        name,
        said_agree=sum(agree),
        true_agree=sum(truth),
        both=sum(a and t for a, t in zip(agree, truth, strict=True)),
        pairs=len(truth),
        unjudged=sum(x is None for x in said),
    )


def matcher_verdicts(
    truth_set: TruthSet, cosines: Sequence[float], cutoff: float, judged_agree: Sequence[bool | None]
) -> dict[str, Sequence[bool | None]]:
    pairs = list(zip(truth_set.small, truth_set.last, strict=True))
    return {
        "exact": [same_text(a.text, b.text) for a, b in pairs],
        "number": [answers_agree(AnswerMatcher.number, a.text, b.text) for a, b in pairs],
        f"semantic >= {cutoff:g} (chosen on humaneval)": [c >= cutoff for c in cosines],
        f"semantic >= {FORMER_CUTOFF:g} (the former default)": [c >= FORMER_CUTOFF for c in cosines],
        "judge (the 1.5B, P(yes) >= 0.5)": list(judged_agree),
    }


def at_calibrated_threshold(
    truth_set: TruthSet, judged_agree: Sequence[bool | None], goal: float, judge: MatcherFigures
) -> dict[str, Any]:
    """The threshold certified on judged agreement, and what it delivers as judged and truly; then with the
    goal tightened by the judge's false-agreement bound (measured on this same set: an illustration)."""
    accept = load_manifest(PAIR).spec.tiers[0].accept
    assert accept is not None
    method = ScoreMethod(accept.method, quantile=accept.quantile)
    scores = score_answers(method, truth_set.examples, truth_set.small)
    judged = [bool(x) for x in judged_agree]
    n = len(scores)

    def delivered(threshold: float | None) -> dict[str, Any]:
        if threshold is None:
            return {"threshold": None, "kept": 0.0, "judged agreement": 1.0, "true agreement": 1.0}
        kept = [score >= threshold for score in scores]
        return {
            "threshold": threshold,
            "kept": sum(kept) / n,
            "judged agreement": 1 - sum(k and not j for k, j in zip(kept, judged, strict=True)) / n,
            "true agreement": 1 - sum(k and not t for k, t in zip(kept, truth_set.truth, strict=True)) / n,
        }

    def certified(target: float, confidence: float, agrees: Sequence[bool]) -> float | None:
        outcomes = [Outcome(score, agree) for score, agree in zip(scores, agrees, strict=True)]
        return select_threshold([Goal(GoalKind.min_agreement, target)], outcomes, confidence=confidence).threshold

    tightened = judged_goal(goal, judge.false_agreements, judge.pairs, confidence=0.95)
    with_truth = certified(goal, 0.95, truth_set.truth)
    return {
        "method": method.label,
        "goal": goal,
        "on judged agreement": delivered(certified(goal, 0.95, judged)),
        "goal tightened": tightened.judged_min_agreement,
        "on judged agreement, goal tightened": delivered(
            None
            if tightened.judged_min_agreement is None
            else certified(tightened.judged_min_agreement, tightened.selection_confidence, judged)
        ),
        "on true agreement (for reference)": delivered(with_truth),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge-only", action="store_true", help="only fill the verdict cache")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    args = parser.parse_args()
    console = Console(width=160)
    judge = judge_for(load_manifest(PAIR), verdicts_dir=OUT / "verdicts", batch_size=4)
    for name in args.sets:
        truth_set = SETS[name](console)
        verdicts = judged(truth_set, judge)
        console.print(f"{name}: {len(verdicts)} pairs judged; {judge.description}")
    if args.judge_only:
        return
    report(console, judge)


def report(console: Console, judge: AnswerJudge) -> None:
    encoder = SentenceEncoder(ensure_onnx_encoder())
    tuning = humaneval(console, limit=80)
    cutoff = choose_cutoff(semantic_cosines(tuning, encoder), tuning.truth)
    console.print(f"semantic cutoff chosen on humaneval (80 pairs, Youden's J): {cutoff:g}")
    results: dict[str, Any] = {"semantic_cutoff": cutoff, "sets": {}}
    lines = [f"semantic cutoff chosen on humaneval's 80 pairs (Youden's J): {cutoff:g}", ""]
    for name in SETS:
        truth_set = SETS[name](console)
        judged_agree = judged(truth_set, judge)
        said = matcher_verdicts(truth_set, semantic_cosines(truth_set, encoder), cutoff, judged_agree)
        rows = {m: figures(m, v, truth_set.truth) for m, v in said.items()}
        entry: dict[str, Any] = {
            "pairs": len(truth_set.truth),
            "truth": truth_set.truth_rule,
            "true agreement": sum(truth_set.truth) / len(truth_set.truth),
            "matchers": [r.row() for r in rows.values()],
        }
        lines += _markdown(
            f"{name}: {len(truth_set.truth)} pairs, true agreement = {truth_set.truth_rule} "
            f"({entry['true agreement']:.1%})",
            [r.row() for r in rows.values()],
        )
        if truth_set.other_truth is not None:
            other = [figures(m, v, truth_set.other_truth).row() for m, v in said.items()]
            entry["against " + truth_set.other_rule] = other
            lines += _markdown(f"{name}, against {truth_set.other_rule}", other)
        judge_row = rows["judge (the 1.5B, P(yes) >= 0.5)"]
        entry["guarantee"] = [at_calibrated_threshold(truth_set, judged_agree, g, judge_row) for g in GOALS]
        lines += _guarantee_lines(name, entry["guarantee"])
        results["sets"][name] = entry
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.json").write_text(json.dumps(results, indent=1) + "\n")
    (OUT / "table.md").write_text("\n".join(lines) + "\n")
    console.print("\n".join(lines))


def _markdown(title: str, rows: list[dict[str, Any]]) -> list[str]:
    header = list(rows[0])
    return [
        f"**{title}**",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(row[h]) for h in header) + " |" for row in rows),
        "",
    ]


def _guarantee_lines(name: str, studies: list[dict[str, Any]]) -> list[str]:
    rows = []
    for study in studies:
        for label in (
            "on judged agreement",
            "on judged agreement, goal tightened",
            "on true agreement (for reference)",
        ):
            point = study[label]
            threshold = "none" if point["threshold"] is None else f"{point['threshold']:g}"
            goal = study["goal tightened"] if label.endswith("tightened") else study["goal"]
            rows.append(
                {
                    "goal": f"minAgreement={study['goal']:g}",
                    "certified": label
                    + (f" (≥ {goal:.3f})" if goal is not None and label.endswith("tightened") else ""),
                    "threshold": threshold,
                    "kept": f"{point['kept']:.1%}",
                    "judged agreement": f"{point['judged agreement']:.3f}",
                    "true agreement": f"{point['true agreement']:.3f}",
                }
            )
    return _markdown(f"{name}: at the threshold certified (95%) for {studies[0]['method']}, in sample", rows)


if __name__ == "__main__":
    main()
