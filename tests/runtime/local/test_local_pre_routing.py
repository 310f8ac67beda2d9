"""Local mode (`kascade up`) with a pre-routed first tier: fixed upstreams on loopback as the tiers.

The same manifest the cluster takes; the router local mode starts skips the
small tier for the prompts its preRoute predicts it would not keep, and says
so in the trail header, /stats, /metrics and the ledger table.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from rich.console import Console

from kascade.api.counters import CounterSlot
from kascade.api.modelcascade import ModelCascade
from kascade.api.pre_route import PreRoute
from kascade.runtime.local.ledger_view import summary_table
from kascade.runtime.local.tiers import serve_cascade
from kascade.runtime.serving import free_port

pytestmark = pytest.mark.slow  # upstreams and a router on loopback ports

DIMENSIONS = 4096


def skipping_hard() -> dict[str, Any]:
    """A preRoute that keeps every prompt but those with the word "hard" (probability < 0.001)."""
    weights = [0.0] * DIMENSIONS
    weights[zlib.crc32(b"w:hard") % DIMENSIONS] = -60.0
    return {"dimensions": DIMENSIONS, "weights": PreRoute.encode_weights(weights), "bias": 3.0, "skipBelow": 0.5}


def external(name: str, url: str, price: float, **tier: Any) -> dict[str, Any]:
    return {
        "name": name,
        "engine": "external",
        "model": {"uri": url, "servedName": f"{name}-model"},
        "price": {"inputPerMillion": price, "outputPerMillion": 2 * price},
        **tier,
    }


def text_of(table: object) -> str:
    printed = io.StringIO()
    Console(file=printed, width=200).print(table)
    return " ".join(printed.getvalue().split())


def test_kascade_up_skips_the_pre_routed_tier_for_the_prompts_it_would_not_keep(start_upstream, tmp_path: Path) -> None:
    small = start_upstream(model="small-model", tokens=["Small", "."])
    large = start_upstream(model="large-model", tokens=["Large", "."])
    cascade = ModelCascade.model_validate(
        {
            "apiVersion": "kascade.dev/v1alpha1",
            "kind": "ModelCascade",
            "metadata": {"name": "routed"},
            "spec": {
                "task": "chat",
                "tiers": [
                    external(
                        "small",
                        small.url,
                        1.0,
                        accept={"method": "geometricMean", "threshold": 0.5},
                        preRoute=skipping_hard(),
                    ),
                    external("large", large.url, 10.0),
                ],
            },
        }
    )
    console = Console(file=io.StringIO(), width=120)
    with serve_cascade(cascade, host="127.0.0.1", port=free_port(), cache_dir=tmp_path, console=console) as router:
        client = OpenAI(base_url=f"{router.url}/v1", api_key="local", max_retries=0)
        kept = client.chat.completions.with_raw_response.create(
            model="routed", messages=[{"role": "user", "content": "an easy question"}], max_tokens=8
        )
        skipped = client.chat.completions.with_raw_response.create(
            model="routed", messages=[{"role": "user", "content": "a hard question"}], max_tokens=8
        )
        stats = httpx.get(f"{router.metrics_url}/stats").json()
        metrics = httpx.get(f"{router.metrics_url}/metrics").text

    assert (kept.headers["x-kascade-tier"], kept.headers["x-kascade-trail"]) == ("small", "small=0.9000")
    assert skipped.headers["x-kascade-tier"] == "large"
    assert skipped.headers["x-kascade-escalated"] == "false"
    assert skipped.headers["x-kascade-trail"].startswith("small=skipped(0.0")
    assert skipped.parse().choices[0].message.content == "Large."
    assert (small.behaviour.requests, large.behaviour.requests) == (1, 1)  # the small tier never saw the hard one

    assert stats["routedPast"] == {"small": 1}
    assert stats["routedPastSaved"] == pytest.approx(stats["tiers"]["small"]["cost"])  # its one call's cost
    assert 'kascade_routed_past_total{cascade="routed",tier="small"} 1.0' in metrics
    table = text_of(summary_table(CounterSlot.model_validate(stats), ["small", "large"]))
    assert "routed past small 1 (50%)" in table
    assert "skipping saved ~" in table
