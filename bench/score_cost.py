"""What scoring an answer costs the router: each method and span on one chat response, in microseconds.

    python bench/score_cost.py [--tokens 256] [--repeats 200]

The router's whole added latency is ~0.68 ms at p50 (docs/benchmarks.md); a
score is part of it. The learned score is compared with the fixed methods in
the same run on the same response (medians and min–max of `--repeats` timed
batches of 20 calls).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

from kascade.api.modelcascade import Accept, ScoreFeature
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.scoring.confidence import score


def response(tokens: int, seed: int = 0) -> tuple[dict, dict]:
    rng = random.Random(seed)
    words = ["def", " f", "(x", "):\n", "    return", " x", " +", " 1", "\n", "```"]
    content = []
    for _ in range(tokens):
        probs = sorted((rng.random() for _ in range(5)), reverse=True)
        total = sum(probs) * 1.2
        top = [{"token": rng.choice(words), "logprob": math.log(p / total)} for p in probs]
        content.append({"token": top[0]["token"], "logprob": top[0]["logprob"], "top_logprobs": top})
    text = "".join(entry["token"] for entry in content)
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": {"content": content}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": tokens},
    }
    request = {"messages": [{"role": "user", "content": "def f(x):\n    '''Add one to x.'''\n" * 4}]}
    return body, request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    body, request = response(args.tokens)
    features = [f.value for f in ScoreFeature if f.value not in {"maxProb", "classMargin", "labelEntropy"}]
    learned = {"features": features, "weights": [0.1] * len(features), "bias": 0.0}
    rules = {
        "geometricMean": Accept(threshold=0.5),
        "quantile": Accept(method="quantile", threshold=0.5),
        "entropy": Accept(method="entropy", threshold=0.5),
        "quantile@finalCodeBlock": Accept(method="quantile", threshold=0.5, span="finalCodeBlock"),
        "quantile@notCopied": Accept(method="quantile", threshold=0.5, span="notCopied"),
        "learned (12 features)": Accept(method="learned", threshold=0.5, learned=learned),
        "learned@notCopied": Accept(method="learned", threshold=0.5, span="notCopied", learned=learned),
    }
    print(f"{'rule':<26} {'µs per score: median':>22} {'min–max':>16} {'× geometricMean':>16}")
    baseline = None
    for name, rule in rules.items():
        timings = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            for _ in range(20):
                score(rule, Endpoint.chat, body, request)
            timings.append((time.perf_counter() - started) / 20 * 1e6)
        median = statistics.median(timings)
        baseline = baseline or median
        print(f"{name:<26} {median:>22.1f} {min(timings):>7.1f}–{max(timings):<8.1f} {median / baseline:>16.2f}")


if __name__ == "__main__":
    main()
