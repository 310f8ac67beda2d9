"""How well each confidence method and scored span ranks one tier's answers by correctness (AUROC), from the
answer cache alone: no other tier needed.

    python bench/span_auroc.py -f bench/eval/qwen-coder-pair.yaml --tier small --data humaneval --limit 80 \
        --answers bench/results/humaneval/answers

Only examples the tier has already answered are read (a run still generating
can be inspected); correctness comes from the dataset's matcher (HumanEval:
its tests, run in a separate process). The learned score is cross-fitted.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from kascade.api.modelcascade import ConfidenceMethod, ScoredSpan
from kascade.evaluation.answer_cache import AnswerFile
from kascade.evaluation.collect import GenerationSettings, model_identity
from kascade.evaluation.curves import Judged, auroc
from kascade.evaluation.datasets import load_dataset, subset
from kascade.evaluation.matchers import Matcher
from kascade.evaluation.scoring import FIXED_TOKEN_METHODS, ScoreMethod, fit_learned, score_answers
from kascade.runtime.local.manifest import load_manifest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-f", "--file", type=Path, required=True)
    parser.add_argument("--tier", default="small")
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--answers", type=Path, required=True)
    args = parser.parse_args()
    cascade = load_manifest(args.file)
    tier = next(t for t in cascade.spec.tiers if t.name == args.tier)
    dataset = subset(load_dataset(args.data), args.limit, args.seed)
    settings = GenerationSettings(max_tokens=dataset.max_tokens, stop=dataset.stop)
    from kascade.runtime.models.files import resolve_model_uri

    cache = AnswerFile(
        args.answers,
        tier.served_name,
        model_identity(tier, resolve_model_uri(tier.model.uri)),
        {"task": cascade.spec.task.value} | settings.as_dict(),
    )
    pairs = [(e, cache.get(e)) for e in dataset.examples if cache.get(e) is not None]
    examples, answers = [p[0] for p in pairs], [p[1] for p in pairs]
    correct = [bool(c) for c in Matcher(dataset.kind).correct(examples, answers)]
    print(f"{len(examples)} answered of {len(dataset.examples)}; correct {sum(correct)}/{len(correct)}")
    print(f"{'method':<16}" + "".join(f"{span.value:>16}" for span in ScoredSpan))
    for method in [*FIXED_TOKEN_METHODS, ConfidenceMethod.learned]:
        row = f"{method.value:<16}"
        for span in ScoredSpan:
            scores = (
                _learned(examples, answers, correct, span)
                if method is ConfidenceMethod.learned
                else score_answers(ScoreMethod(method, span=span), examples, answers)
            )
            value = auroc([Judged(s, c, c, None, 0, 0) for s, c in zip(scores, correct)])
            row += f"{value:>16.3f}" if value is not None else f"{'–':>16}"
        print(row)


def _learned(examples, answers, correct, span, folds: int = 5):  # type: ignore[no-untyped-def]
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    scores = [0.0] * len(examples)
    for fold in range(folds):
        test = sorted(order[fold::folds])
        train = [i for i in order if i not in set(test)]
        fitted = fit_learned(
            [examples[i] for i in train], [answers[i] for i in train], [correct[i] for i in train], span=span
        )
        for i, value in zip(test, score_answers(fitted, [examples[i] for i in test], [answers[i] for i in test])):
            scores[i] = value
    return scores


if __name__ == "__main__":
    main()
