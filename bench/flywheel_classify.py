"""One turn of the flywheel on real models: MiniLM in front of mpnet on the tweets, the log on, distil, measure again.

1. Traffic: `--traffic` tweets from `tweets:train`, sent to a real router (the
   two classifiers in process, the threshold of bench/eval/tweets-encoders.yaml)
   with the escalation log on; every escalated request is kept with mpnet's
   class probabilities.
2. `kascade distill` trains MiniLM (encoder and head, no LoRA) on the log's soft
   targets: nothing but what the cascade logged.
3. Held out: `--held-out` tweets from `tweets:test`, never in the traffic,
   evaluated with `kascade eval` for the cascade before and after (the same
   mpnet answers, cached): at the same goal (minAgreement 0.9 with 95%
   confidence), how many requests the certified threshold keeps on the small
   tier, median over 100 calibration/held-out splits, and the student alone.

    python bench/flywheel_classify.py      # ~15 min on two cores; bench/results/flywheel/tweets/
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "bench/eval/tweets-encoders.yaml"
GOAL = "minAgreement=0.9"


def send_traffic(
    bodies: list[dict], log: Path, cascade: dict, *, path: str = "/classify", concurrency: int = 4
) -> dict:
    """Every body through a real router (the manifest's tiers in process) with the escalation log on."""
    from kascade.api.modelcascade import ModelCascade, Task
    from kascade.runtime.config import EscalationLogConfig, router_config_from_cascade
    from kascade.runtime.engines.transformers import TransformersEngine
    from kascade.runtime.models.files import resolve_model_uri
    from kascade.runtime.router import create_router_app
    from kascade.runtime.serving import BackgroundServer

    model = ModelCascade.model_validate(cascade)
    task = "classify" if model.spec.task is Task.classify else "generate"
    engines = {
        tier.name: TransformersEngine.load(
            resolve_model_uri(tier.model.uri) if "://" in tier.model.uri else REPO / tier.model.uri,
            task=task,
            served_model_name=tier.served_name,
            device="cpu",
        )
        for tier in model.spec.tiers
    }
    config = router_config_from_cascade(model, {tier.name: None for tier in model.spec.tiers})
    config = config.model_copy(update={"escalation_log": EscalationLogConfig(uri=str(log)), "timeout_seconds": 600})
    started = time.monotonic()
    with BackgroundServer(create_router_app(config, engines=engines)) as router:

        async def client() -> None:
            async with httpx.AsyncClient(base_url=router.url, timeout=1200) as http:
                gate = asyncio.Semaphore(concurrency)

                async def one(body: dict) -> None:
                    async with gate:
                        (await http.post(path, json={"model": config.cascade, **body})).raise_for_status()

                await asyncio.gather(*(one(body) for body in bodies))

        asyncio.run(client())
        stats = httpx.get(f"{router.metrics_url}/stats").json()
    for engine in engines.values():
        asyncio.run(engine.aclose())
    return {
        "requests": stats["requests"],
        "escalations": stats["escalations"],
        "logged": stats["escalationsLogged"],
        "dropped": stats["escalationLogDropped"],
        "seconds": round(time.monotonic() - started, 1),
    }


def kascade(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "kascade", *args], check=True, cwd=REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traffic", type=int, default=5000)
    parser.add_argument("--held-out", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/flywheel/tweets")
    args = parser.parse_args()
    from kascade.evaluation.datasets import load_dataset, subset

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cascade = yaml.safe_load(MANIFEST.read_text())
    traffic = subset(load_dataset("tweets:train"), args.traffic, 0)
    held = subset(load_dataset("tweets:test"), args.held_out, 0)
    (out / "held-out.jsonl").write_text(
        "".join(json.dumps({"id": e.id, "input": e.input, "label": e.label}) + "\n" for e in held.examples)
    )
    log = out / "log"
    if not log.exists():
        traffic_stats = send_traffic([{"input": e.input} for e in traffic.examples], log, cascade)
        (out / "traffic.json").write_text(json.dumps(traffic_stats, indent=1))
    student = out / "student"
    kascade(
        "distill",
        "--student",
        str(REPO / cascade["spec"]["tiers"][0]["model"]["uri"]),
        "--data",
        str(log),
        "--out",
        str(student),
        "--no-lora",
        "--steps",
        str(args.steps),
        "--batch-size",
        "16",
        "--learning-rate",
        "5e-5",
        "--temperature",
        "2",
        "--alpha",
        "0.5",
        "--max-length",
        "128",
        "--eval-every",
        "100",
        "--held-out",
        "0.1",
    )
    after = json.loads(json.dumps(cascade))
    after["metadata"]["name"] = "tweets-encoders-distilled"
    after["spec"]["tiers"][0]["model"]["uri"] = str(student.relative_to(REPO))
    (out / "after.yaml").write_text(yaml.safe_dump(after, sort_keys=False))
    for name, manifest in (("before", MANIFEST), ("after", out / "after.yaml")):
        kascade(
            "eval",
            "-f",
            str(manifest),
            "--data",
            str(out / "held-out.jsonl"),
            "--goal",
            GOAL,
            "--span",
            "all",
            "--answers",
            str(out / "answers"),
            "--out",
            str(out / name),
            "--batch-size",
            "32",
        )
    summarize(out)


def summarize(out: Path, method_name: str = "maxProb", goal: str = GOAL) -> None:
    rows = {}
    for name in ("before", "after"):
        report = json.loads((out / name / "report.json").read_text())
        method = next(m for m in report["methods"] if m["method"].startswith(method_name))
        rows[name] = {
            "alone_accuracy": report["small_tier"].get("accuracy"),
            "agreement": report["agreement_of_tiers"],
            "bound_kept": method["held_out"]["bound"]["small_share_median"],
            "bound_range": (
                method["held_out"]["bound"]["small_share_min"],
                method["held_out"]["bound"]["small_share_max"],
            ),
            "goal_met": method["held_out"]["bound"]["met_share"],
            "auroc": method["auroc"],
        }
    print(
        "| cascade | small tier alone: accuracy | agreement with the last tier | kept at the goal (bound), median (min–max) | "
        "escalated | goal held | AUROC |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['alone_accuracy']} | {row['agreement']:.3f} | {row['bound_kept']:.1%} "
            f"({row['bound_range'][0]:.1%}–{row['bound_range'][1]:.1%}) | {1 - row['bound_kept']:.1%} | "
            f"{row['goal_met']:.0%} | {row['auroc']:.3f} |"
        )
    fewer = 1 - (1 - rows["after"]["bound_kept"]) / (1 - rows["before"]["bound_kept"])
    print(f"\nescalations at {goal} (95% confidence), {method_name}: {fewer:.1%} fewer after one turn (target ≥ 25%)")
    (out / "summary.json").write_text(json.dumps({"rows": rows, "fewer_escalations": fewer}, indent=1))


if __name__ == "__main__":
    main()
