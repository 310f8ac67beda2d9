"""Local mode (`kascade up`) with `matcher: judge`: the last tier, served in process by Kascade's transformers
engine, is the judge; it returns the top logprobs of one chat token, which is what a verdict is read from."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from kascade.api.modelcascade import ModelCascade
from kascade.calibration.judge import TOP_LOGPROBS, judge_body
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.local.tiers import serve_cascade
from kascade.runtime.logprobs import first_token_alternatives
from kascade.runtime.serving import free_port


def _tier(name: str, path: Path, threshold: float | None = None) -> dict[str, Any]:
    tier: dict[str, Any] = {
        "name": name,
        "engine": "transformers",
        "model": {"uri": str(path), "servedName": f"{name}-model"},
        "price": {"inputPerMillion": 1.0, "outputPerMillion": 2.0},
    }
    if threshold is not None:
        tier["accept"] = {"method": "geometricMean", "threshold": threshold}
    return tier


def test_the_transformers_engine_answers_the_judges_question_with_top_logprobs(tiny_large_lm_dir: Path) -> None:
    from kascade.runtime.engines.transformers import TransformersEngine

    engine = TransformersEngine.load(tiny_large_lm_dir, task="generate", device="cpu", served_model_name="large")

    async def ask() -> dict[str, Any]:
        try:
            return await engine.call(Endpoint.chat, judge_body("large", "user: 2+2?", "4", "four"))
        finally:
            await engine.aclose()

    response = asyncio.run(ask())
    assert response["usage"]["completion_tokens"] == 1
    (first,) = response["choices"][0]["logprobs"]["content"]
    assert len(first["top_logprobs"]) == TOP_LOGPROBS and first_token_alternatives(response)


def test_kascade_up_with_matcher_judge_asks_the_last_tier_and_counts_its_calls(
    tiny_small_lm_dir: Path, tiny_large_lm_dir: Path, tmp_path: Path
) -> None:
    cascade = ModelCascade.model_validate(
        {
            "apiVersion": "kascade.dev/v1alpha1",
            "kind": "ModelCascade",
            "metadata": {"name": "tiny-cascade"},
            "spec": {
                "task": "chat",
                "tiers": [_tier("small", tiny_small_lm_dir, threshold=0.0), _tier("large", tiny_large_lm_dir)],
                "calibration": {"minAgreement": 0.9, "shadowSampleRate": 1.0, "matcher": "judge"},
            },
        }
    )
    console = Console(file=io.StringIO())
    with serve_cascade(cascade, host="127.0.0.1", port=free_port(), cache_dir=tmp_path, console=console) as router:
        chat = {"model": "tiny-cascade", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        response = httpx.post(f"{router.url}/v1/chat/completions", json=chat, timeout=60.0)
        assert response.status_code == 200 and response.headers["x-kascade-tier"] == "small"
        deadline, stats_url = time.monotonic() + 60.0, f"{router.metrics_url}/stats"
        while (stats := httpx.get(stats_url).json())["judgeCalls"] < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert stats["shadowCalls"] == 1 and stats["judgeCalls"] == 1
    # A random tiny model says neither yes nor no: counted as no verdict, or judged; never lost silently.
    judged = sum(stats["calibrationSamples"].values())
    assert judged + stats["judgeFailures"] == 1 and stats["shadowSampling"]["unjudged"] == stats["judgeFailures"]


def test_kascade_ups_ledger_view_shows_the_judges_calls_apart() -> None:
    from kascade.api.counters import CounterSlot
    from kascade.api.modelcascade import Price
    from kascade.runtime.ledger import Ledger
    from kascade.runtime.local.ledger_view import summary_table

    ledger = Ledger({"small": Price(), "large": Price(input_per_million=10.0)})
    ledger.record_judge_call(0.002, verdict=True)
    ledger.record_judge_call(0.0, verdict=False)
    ledger.note_judge_skipped()
    shown = io.StringIO()
    Console(file=shown, width=200).print(
        summary_table(CounterSlot.model_validate(ledger.snapshot()), ["small", "large"])
    )
    text = " ".join(shown.getvalue().split())
    assert "judge calls 2 (1 without a verdict, 1 skipped); 0.002000 USD" in text
