"""What matcher semantic costs the router: embedding time per pair, the memory the encoder adds, its size on disk.

    python bench/semantic_encoder.py [--repeats 5]

The packaged MiniLM exported to ONNX (`kascade.runtime.models.encoder`,
exported into the cache on first use) embeds both answers of a pair; the
router judges samples off the response path, batched. Pairs are the demo
chat answers (`bench/results/demo/answers`: SmolLM2 and Qwen 0.5B, at most 48
tokens each) and long ones (both answers past the encoder's 256-token cap, the
most a pair can cost). Each figure is the time per pair to judge the same pairs (96
demo pairs, 32 long ones) one call per pair or 16 pairs per call, the median of
`--repeats` runs, wall-clock and CPU time (all threads), with ONNX Runtime's intra-op threads 1 (the
router's default) and 2. The memory is measured in a fresh process: the
resident set after importing the router's config, after loading the encoder
and after embedding 16 long pairs (VmHWM: the peak).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kascade.runtime.models.encoder import SentenceEncoder, ensure_onnx_encoder

REPO = Path(__file__).resolve().parent.parent
DEMO_ANSWERS = REPO / "bench/results/demo/answers"
LONG = ("The cascade answers with the small model first and escalates when it is not confident. " * 30).strip()

MEMORY_PROBE = """
import json, sys
from pathlib import Path

def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM")}

import kascade.runtime.config  # what every router imports
before = rss()
from kascade.runtime.models.encoder import SentenceEncoder
encoder = SentenceEncoder(Path(sys.argv[1]), threads=1)
loaded = rss()
encoder.cosines([sys.argv[2]] * 16, [sys.argv[2]] * 16)
embedded = rss()
print(json.dumps({"before": before, "loaded": loaded, "embedded": embedded, "torch": "torch" in sys.modules}))
"""


def demo_pairs() -> list[tuple[str, str]]:
    """(small, large) answer texts of the demo chat prompts, by example id."""
    by_model: list[dict[str, str]] = []
    for path in sorted(DEMO_ANSWERS.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        by_model.append({row["id"]: row["answer"]["text"] for row in rows if "key" in row})
    small, large = by_model
    return [(small[i], large[i]) for i in sorted(small.keys() & large.keys())]


def per_pair_ms(
    encoder: SentenceEncoder, pairs: list[tuple[str, str]], batch: int, repeats: int
) -> tuple[float, float]:
    """(wall, CPU) milliseconds per pair to judge all of `pairs`, `batch` pairs per call: medians of `repeats` runs."""
    encoder.cosines([pairs[0][0]], [pairs[0][1]])  # warm up
    chunks = [pairs[i : i + batch] for i in range(0, len(pairs), batch)]
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for chunk in chunks:
            encoder.cosines([a for a, _ in chunk], [b for _, b in chunk])
        wall.append((time.perf_counter() - start) / len(pairs))
        cpu.append((time.process_time() - start_cpu) / len(pairs))
    return statistics.median(wall) * 1000, statistics.median(cpu) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = ensure_onnx_encoder()
    size = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
    print(f"encoder folder {folder}: {size:.1f} MB ({', '.join(sorted(f.name for f in folder.iterdir()))})")
    workloads = {"demo chat answers": demo_pairs()[:96], "long answers (256-token cap)": [(LONG, LONG + " Yes.")] * 32}
    print("\n| pairs | threads | batch 1: wall, CPU (ms/pair) | batch 16: wall, CPU (ms/pair) |\n|---|---|---|---|")
    for threads in (1, 2):
        encoder = SentenceEncoder(folder, threads=threads)
        for name, pairs in workloads.items():
            (one, one_cpu), (sixteen, sixteen_cpu) = (per_pair_ms(encoder, pairs, b, args.repeats) for b in (1, 16))
            print(f"| {name} | {threads} | {one:.1f}, {one_cpu:.1f} | {sixteen:.1f}, {sixteen_cpu:.1f} |")
    probe = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(folder), LONG], capture_output=True, text=True, check=True
    )
    memory = json.loads(probe.stdout)
    added = memory["loaded"]["VmRSS"] - memory["before"]["VmRSS"]
    peak = memory["embedded"]["VmHWM"] - memory["before"]["VmRSS"]
    print(
        f"\nresident memory: router config imported {memory['before']['VmRSS']} MB; the encoder loaded adds "
        f"{added} MB; its peak after 16 long pairs adds {peak} MB; torch imported: {memory['torch']}"
    )


if __name__ == "__main__":
    main()
