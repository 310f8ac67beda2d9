"""The flagship example's online calibration (examples/chat-vllm-gpu.yaml, `matcher: judge`) on free text.

Its router, rendered from the example as the operator renders it, runs on loopback in front of fixed tiers: the
small tier answers in its words, the large one says the same in others. With the example's judge (the large tier,
asked on every sample) the paraphrases agree and the calibrated threshold keeps a share on the small tier; with
`exact` on the same traffic no answer agrees, and every request escalates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kascade.api.modelcascade import ModelCascade
from kascade.runtime.config import router_config_from_cascade
from kascade.runtime.router import create_router_app
from kascade.runtime.serving import BackgroundServer

pytestmark = pytest.mark.slow  # a router and tiers on loopback

FLAGSHIP = Path(__file__).resolve().parents[3] / "examples" / "chat-vllm-gpu.yaml"
REQUESTS = 70  # the example's goal (minAgreement 0.95 at 95%) needs about 60 agreeing samples to certify
SMALL_ANSWER = ["The", " capital", " of", " France", " is", " Paris", "."]
LARGE_ANSWER = ["Paris", " is", " France", "'s", " capital", "."]


def _flagship(**calibration: Any) -> ModelCascade:
    """The example, every request sampled so the test needs fewer than the example's 5% would take."""
    document = yaml.safe_load(FLAGSHIP.read_text())
    document["spec"]["calibration"].update(shadowSampleRate=1.0, minSamples=60, **calibration)
    return ModelCascade.model_validate(document)


def _calibrated_share(cascade: ModelCascade, small_url: str, large_url: str, log_dir: Path) -> tuple[float, Any]:
    """Send the traffic, run one calibration step, and return the share the small tier keeps afterwards."""
    config = router_config_from_cascade(
        cascade,
        {"small": small_url, "large": large_url},
        escalation_log_uri=str(log_dir),
        calibrate_in_process=True,
    )
    app = create_router_app(config)
    with BackgroundServer(app) as router:
        chat = {"model": "chat", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
        for _ in range(REQUESTS):
            assert httpx.post(f"{router.url}/v1/chat/completions", json=chat, timeout=10.0).status_code == 200
        deadline = time.monotonic() + 20.0
        while sum(app.main.state.router.ledger.counter_slot().calibration_samples.values()) < REQUESTS:
            assert time.monotonic() < deadline, app.main.state.router.ledger.counter_slot()
            time.sleep(0.05)
        (tier,) = app.main.state.router.calibrator.step().tiers
        after = [
            httpx.post(f"{router.url}/v1/chat/completions", json=chat, timeout=10.0).headers["x-kascade-tier"]
            for _ in range(10)
        ]
        stats = httpx.get(f"{router.metrics_url}/stats").json()
    return after.count("small") / len(after), (tier, stats)


def test_the_flagship_judges_free_text_and_keeps_a_share_where_exact_escalates_everything(
    tmp_path: Path, start_upstream: Any, start_judging_upstream: Any
) -> None:
    flagship = _flagship()
    assert flagship.spec.matcher.value == "judge"  # the example's matcher: the large tier judges
    small = start_upstream(model="qwen2.5-7b-instruct", tokens=SMALL_ANSWER, token_prob=0.9)
    large = start_judging_upstream(model="llama-3.1-70b-instruct", tokens=LARGE_ANSWER)  # yes to paraphrases

    kept, (tier, stats) = _calibrated_share(flagship, small.url, large.url, tmp_path / "judge")
    assert tier.met and tier.threshold <= 0.9 and kept == 1.0
    assert stats["judgeCalls"] >= REQUESTS and stats["judgeFailures"] == 0 and stats["judgeCost"] > 0
    assert stats["calibrationAgreed"] == stats["calibrationSamples"]
    assert all(question["model"] == "llama-3.1-70b-instruct" for question in large.judge.questions)

    exact_kept, (exact_tier, exact_stats) = _calibrated_share(
        _flagship(matcher="exact"), small.url, large.url, tmp_path / "exact"
    )
    assert exact_tier.threshold > 0.9 and exact_kept == 0.0  # above every score seen: nothing is kept
    assert exact_stats["calibrationAgreed"] == {} and exact_stats["judgeCalls"] == 0
