"""One turn of the flywheel with language models: Qwen2.5-Coder 0.5B in front of the 1.5B on school mathematics.

1. Traffic: `--traffic` questions generated with another seed than the
   held-out set (`mathematics-dataset`, seed 1000; any question also in the
   held-out set is dropped), asked for the final number, through a real router
   (both models in process, the rule of bench/eval/qwen-coder-pair.yaml) with
   the escalation log on: each escalation is kept with the 1.5B's token ids,
   top-5 logprobs and tail. The teacher's answer is the supervision; no
   reference answer is used for training.
2. `kascade distill`: the 0.5B with LoRA (rank 16, merged), token level from
   the log (the pair shares a tokenizer), forward KL at T = 1 mixed with the
   hard teacher tokens (alpha 0.5); 25 steps of 4 by default, about one pass
   over the log: on two cores one step of the 0.5B takes tens of seconds.
3. Held out: the 500 questions of `--data math` (seed 0), never in the
   traffic, evaluated with `kascade eval` before (the answers of
   docs/evaluation.md §2, cached) and after (the student answers; the 1.5B's
   answers come from the same cache): the share the certified threshold keeps
   at `--goal`, median over 100 splits, and the student's own accuracy.

    python bench/flywheel_math.py --traffic 160 --goal minAgreement=0.8   # ~1 h on two cores; bench/results/flywheel/math/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from flywheel_classify import REPO, kascade, send_traffic, summarize

MANIFEST = REPO / "bench/eval/qwen-coder-pair.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traffic", type=int, default=300)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", default="5e-4")
    parser.add_argument("--goal", default="minAgreement=0.8")
    parser.add_argument("--answers", type=Path, default=REPO / "bench/results/math/answers")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/flywheel/math")
    args = parser.parse_args()
    from kascade.evaluation.math_questions import mathematics

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cascade = yaml.safe_load(MANIFEST.read_text())
    held = mathematics(seed=0)
    asked = {e.messages[-1]["content"] for e in held.examples}
    traffic = [e for e in mathematics(seed=1000).examples if e.messages[-1]["content"] not in asked][: args.traffic]
    log = out / "log"
    if not log.exists():
        bodies = [{"messages": list(e.messages), "max_tokens": held.max_tokens, "temperature": 0} for e in traffic]
        stats = send_traffic(bodies, log, cascade, path="/v1/chat/completions", concurrency=2)
        (out / "traffic.json").write_text(json.dumps({**stats, "questions": len(traffic)}, indent=1))
    student = out / "student"
    kascade(
        "distill",
        "--student",
        cascade["spec"]["tiers"][0]["model"]["uri"],
        "--data",
        str(log),
        "--out",
        str(student),
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--learning-rate",
        args.learning_rate,
        "--temperature",
        "1",
        "--alpha",
        "0.5",
        "--max-length",
        "256",
        "--max-new-tokens",
        "24",
        "--eval-every",
        str(args.steps),
        "--eval-generate",
        "16",
        "--match",
        "number",
        "--held-out",
        "0.1",
    )
    after = json.loads(json.dumps(cascade))
    after["metadata"]["name"] = "qwen-coder-pair-distilled"
    after["spec"]["tiers"][0]["model"]["uri"] = str(student.relative_to(REPO))
    (out / "after.yaml").write_text(yaml.safe_dump(after, sort_keys=False))
    for name, manifest in (("before", MANIFEST), ("after", out / "after.yaml")):
        kascade(
            "eval",
            "-f",
            str(manifest),
            "--data",
            "math",
            "--goal",
            args.goal,
            "--batch-size",
            "16",
            "--span",
            "all",
            "--answers",
            str(args.answers),
            "--out",
            str(out / name),
        )
    summarize(out, method_name="quantile", goal=args.goal)


if __name__ == "__main__":
    main()
