"""Hard labels against soft targets: the same MiniLM student, the same data and steps, on BBC, SpamAssassin and the tweets.

Student: MiniLM with its logistic head (bench/train_classifiers.py), encoder and
head trained (no LoRA). Teacher: mpnet with its head, run in process for its
class probabilities. Data: `NAME:test` (which neither head was fitted on),
at most `--limit` examples, half of them held out by a stable hash. Four runs
per dataset, equal in all but the target: hard labels (alpha 0), and the
teacher's soft targets alone (alpha 1) at temperatures 1, 2 and 4. Reported:
held-out accuracy against the labels and agreement with the teacher, before
and after.

    python bench/distill_classifiers.py                          # hours on two cores (BBC and spam are long texts)
    python bench/distill_classifiers.py --datasets tweets --limit 800 --steps 100   # ~15 min
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSIFIERS = REPO / "bench/results/classifiers"
RUNS = {"hard labels": ("0", "1"), "soft T=1": ("1", "1"), "soft T=2": ("1", "2"), "soft T=4": ("1", "4")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["bbc", "spam", "tweets"])
    parser.add_argument("--limit", type=int, default=1200)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--max-length", type=int, default=128, help="Tokens per input (the start of longer texts).")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/distill-classifiers")
    args = parser.parse_args()
    from kascade.evaluation.datasets import load_dataset, subset

    for name in args.datasets:
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        data = subset(load_dataset(f"{name}:test"), args.limit, 0)
        (folder / "data.jsonl").write_text(
            "".join(json.dumps({"id": e.id, "input": e.input, "label": e.label}) + "\n" for e in data.examples)
        )
        for run, (alpha, temperature) in RUNS.items():
            out = folder / run.replace(" ", "-").replace("=", "")
            if (out / "provenance.json").exists():
                continue
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "kascade",
                    "distill",
                    "--student",
                    str(CLASSIFIERS / f"{name}-all-minilm-l6-v2"),
                    "--teacher",
                    str(CLASSIFIERS / f"{name}-all-mpnet-base-v2"),
                    "--data",
                    str(folder / "data.jsonl"),
                    "--out",
                    str(out),
                    "--no-lora",
                    "--alpha",
                    alpha,
                    "--temperature",
                    temperature,
                    "--steps",
                    str(args.steps),
                    "--batch-size",
                    "16",
                    "--learning-rate",
                    "5e-5",
                    "--max-length",
                    str(args.max_length),
                    "--held-out",
                    "0.5",
                    "--eval-every",
                    str(args.steps),
                ],
                check=True,
                cwd=REPO,
            )
    summarize(args.out, args.datasets)


def summarize(out: Path, datasets: list[str]) -> None:
    print("| dataset | run | held-out | accuracy before → after | agreement with mpnet before → after | seconds |")
    print("|---|---|---|---|---|---|")
    for name in datasets:
        for run in RUNS:
            path = out / name / run.replace(" ", "-").replace("=", "") / "provenance.json"
            if not path.exists():
                continue
            p = json.loads(path.read_text())
            b, a = p["before"], p["after"]
            print(
                f"| {name} | {run} | {p['data']['held_out']} | {b['answer_accuracy']:.3f} → {a['answer_accuracy']:.3f} | "
                f"{b['answer_agreement']:.3f} → {a['answer_agreement']:.3f} | {p['seconds']:.0f} |"
            )


if __name__ == "__main__":
    main()
