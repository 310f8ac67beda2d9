"""`kascade distill` against TRL's GKDTrainer on the same tiny models, data, batch size and loss: samples/s, peak memory.

The case measured is the escalation log's: the teacher's top-k (+ tail) was
recorded when it answered, so Kascade's trainer never runs the teacher; TRL's
GKDTrainer (lmbda = 0: off-policy, on the dataset's answers; beta = 0: forward
KL; temperature 1) runs the teacher's forward pass at every step. Both train
the whole student (no LoRA) with AdamW, on the same 96 chat examples whose
answers the teacher generated, with the same batch size and learning rate.
Kascade uses alpha = 1 (the soft term only), as GKD's loss has no hard term.

Each trainer runs in its own process (peak memory is per process: ru_maxrss),
alternating, `--repeats` times; samples/s counts the steps after the first
(warm-up excluded) from a per-step callback in both.

    python bench/distill_speed.py                    # ~5 min on two cores
    python bench/distill_speed.py --steps 30 --repeats 3 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def build_fixture(folder: Path, examples: int, answer_tokens: int, top_k: int) -> None:
    """Tiny student and teacher (one tokenizer), and a log of the teacher's answers with top-k + tail."""
    import torch

    from kascade.api.escalation_record import EscalationRecord, ModelIdentity, TeacherTokens
    from kascade.runtime.escalation.segments import SegmentStore, records_table
    from kascade.testing.tiny_models import build_tiny_causal_lm

    student = build_tiny_causal_lm(folder / "student", seed=1, hidden_size=128, layers=4)
    teacher_dir = build_tiny_causal_lm(folder / "teacher", seed=2, hidden_size=256, layers=4)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    records, dataset = [], []
    words = "cat dog sun sky park model cascade answer question Paris Rome Madrid".split()
    for index in range(examples):
        prompt = f"Tell me about the {words[index % len(words)]} number {index}."
        messages = [{"role": "user", "content": prompt}]
        prompt_ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = teacher.generate(
                ids,
                max_new_tokens=answer_tokens,
                min_new_tokens=answer_tokens,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=tokenizer.pad_token_id,
            )
        answer_ids = out.sequences[0, ids.shape[1] :].tolist()
        logprobs = torch.log_softmax(torch.stack(out.logits)[:, 0].float(), dim=-1)
        values, top = logprobs.topk(top_k, dim=-1)
        text = tokenizer.decode(answer_ids, skip_special_tokens=True)
        tokens = TeacherTokens(
            token_ids=answer_ids,
            top_ids=top.tolist(),
            top_logprobs=values.tolist(),
            tail_mass=(1 - values.exp().sum(-1)).clamp_min(0).tolist(),
        )
        records.append(
            EscalationRecord(
                id=f"r{index}",
                cascade="bench",
                recorded_at="2026-11-30T00:00:00Z",
                endpoint="chat",
                request=json.dumps({"messages": messages}),
                declined=[],
                answer=text,
                tokens=tokens,
                answered_by=ModelIdentity(tier="large", served_model="teacher"),
            )
        )
        dataset.append({"messages": [*messages, {"role": "assistant", "content": text}]})
    SegmentStore(str(folder / "log")).write("escalations-20261130T000000Z-bench-000000.parquet", records_table(records))
    (folder / "dataset.json").write_text(json.dumps(dataset))


def run_kascade(folder: Path, steps: int, batch_size: int, learning_rate: float) -> dict:
    from kascade.api.distill_settings import DistillSettings
    from kascade.distillation.run import run_distill

    settings = DistillSettings.of_options(
        dict(
            student=str(folder / "student"),
            data=str(folder / "log"),
            out=folder / "kascade-out",
            steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            warmup_steps=0,
            alpha=1.0,
            temperature=1.0,
            lora=False,
            held_out=0.0,
            eval_every=steps,
            eval_generate=0,
            max_length=256,
            device="cpu",
        )
    )
    stamps: list[float] = []
    run_distill(
        settings, resume=False, say=lambda _: None, progress=lambda step, loss: stamps.append(time.perf_counter())
    )
    return {"stamps": stamps}


def run_trl(folder: Path, steps: int, batch_size: int, learning_rate: float) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    tokenizer = AutoTokenizer.from_pretrained(folder / "student")
    config = GKDConfig(
        output_dir=str(folder / "trl-out"),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        lmbda=0.0,
        beta=0.0,
        temperature=1.0,
        max_length=256,
        report_to=[],
        save_strategy="no",
        logging_steps=steps,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    trainer = GKDTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder / "student"),
        teacher_model=AutoModelForCausalLM.from_pretrained(folder / "teacher"),
        args=config,
        train_dataset=Dataset.from_list(json.loads((folder / "dataset.json").read_text())),
        processing_class=tokenizer,
        callbacks=[Stamp()],
    )
    trainer.train()
    return {"stamps": stamps}


def child(which: str, folder: Path, steps: int, batch_size: int, learning_rate: float) -> None:
    import torch

    torch.manual_seed(0)
    result = (run_kascade if which == "kascade" else run_trl)(folder, steps, batch_size, learning_rate)
    stamps = result["stamps"]
    samples_per_second = (len(stamps) - 1) * batch_size / (stamps[-1] - stamps[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"samples_per_second": samples_per_second, "peak_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--answer-tokens", type=int, default=48)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--child", choices=["kascade", "trl"])
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folder, args.steps, args.batch_size, 1e-4)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_fixture(folder, args.examples, args.answer_tokens, args.top_k)
        results: dict[str, list[dict]] = {"kascade": [], "trl": []}
        for _ in range(args.repeats):
            for which in ("kascade", "trl"):
                out = subprocess.run(
                    [
                        sys.executable,
                        str(HERE),
                        "--child",
                        which,
                        "--folder",
                        str(folder),
                        "--steps",
                        str(args.steps),
                        "--batch-size",
                        str(args.batch_size),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                results[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
    report(results, args)


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    print(
        f"\nstudent 128x4, teacher 256x4 (tiny Llama, shared tokenizer); {args.examples} examples, "
        f"{args.answer_tokens}-token answers, batch {args.batch_size}, {args.steps} steps, {args.repeats} runs each\n"
    )
    print("| trainer | samples/s, median (min–max) | peak memory MiB, median (min–max) |")
    print("|---|---|---|")
    medians = {}
    for which, label in (
        ("kascade", "kascade distill (top-20 + tail from the log)"),
        ("trl", "TRL GKDTrainer (lmbda=0, beta=0; teacher forward each step)"),
    ):
        speeds = [r["samples_per_second"] for r in results[which]]
        peaks = [r["peak_mib"] for r in results[which]]
        medians[which] = statistics.median(speeds)
        print(
            f"| {label} | {statistics.median(speeds):.1f} ({min(speeds):.1f}–{max(speeds):.1f}) | "
            f"{statistics.median(peaks):.0f} ({min(peaks):.0f}–{max(peaks):.0f}) |"
        )
    print(f"\nspeed ratio kascade / TRL (medians): {medians['kascade'] / medians['trl']:.2f}x (target ≥ 1.5x)")


if __name__ == "__main__":
    main()
