"""Pre-routing does not bias online calibration: the probes keep its samples a uniform draw of the tier's traffic.

Synthetic traffic, seeded: easy prompts the small tier answers well and is
sure of, hard prompts (a share of them) it is often wrong on yet sometimes
sure of. The pre-route score skips the hard ones. Online calibration runs on
the same traffic with the same per-request draws three ways:

- without pre-routing: every request gives the small tier's (score, agreed) pair when drawn;
- with pre-routing and its probes: a skipped request drawn for calibration is probed, and gives its pair;
- what pre-routing would leave without probes: the pairs of the kept (easy) prompts alone.

The threshold chosen with pre-routing on must be the one chosen without it
(within one bin); without the probes it would be far bolder, since the
samples would miss the hard prompts' confident mistakes.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from test_pre_routing import PromptEngine, Router, ask, config, settle, skipping

from kascade.api.counters import CounterSlot
from kascade.api.loop import Calibration
from kascade.calibration.online import BIN_EDGES, Bins, next_threshold, online_goals
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.scoring.pre_route import PreRouteScorer

GOAL = Calibration(min_agreement=0.9, confidence=0.9, shadow_sample_rate=0.5, min_samples=50, hysteresis=0.0)
DECLARED = 0.5


@dataclass(frozen=True)
class Request:
    prompt: str
    score: float  # the small tier's confidence on it
    agrees: bool  # whether its answer is the large tier's
    draw: float  # the request's uniform draw (shadow sampling, and the probe's when skipped)


def traffic(count: int = 1500, *, seed: int = 19) -> list[Request]:
    rng = random.Random(seed)
    requests = []
    for index in range(count):
        hard = rng.random() < 0.4
        score = rng.uniform(0.3, 0.999) if hard else rng.uniform(0.55, 0.999)
        agrees = rng.random() < (0.4 if hard else 0.97)
        kind = "hard" if hard else "easy"
        requests.append(Request(f"{kind} question {index}", score, agrees, rng.random()))
    return requests


def calibrated(requests: list[Request], *, pre_routing: bool) -> tuple[float, CounterSlot]:
    """The threshold online calibration chooses from the samples of this traffic, and the ledger's slot."""
    by_prompt = {request.prompt: request for request in requests}
    current = [0.0]

    def small(prompt: str) -> tuple[str, float]:
        request = by_prompt[prompt]
        return ("A" if request.agrees else "B"), request.score

    async def run() -> CounterSlot:
        router = Router(
            config(skipping("hard") if pre_routing else None, threshold=DECLARED, rate=GOAL.shadow_sample_rate),
            PromptEngine(small),
            PromptEngine(lambda prompt: ("A", 0.9)),
            draw=lambda: current[0],
        )
        for request in requests:
            current[0] = request.draw
            await router.cascade.answer(Endpoint.chat, ask(request.prompt))
            await settle()
        await router.cascade.close()
        return router.ledger.counter_slot()

    slot = asyncio.run(run())
    bins = Bins.of(slot.calibration_samples, slot.calibration_agreed, "small")
    decision = next_threshold(online_goals(GOAL), GOAL, bins, current=GOAL.max_threshold)
    assert decision.reason == "GoalMet", decision.message
    return decision.threshold, slot


def bin_index(threshold: float) -> int:
    return BIN_EDGES.index(threshold)


def test_thresholds_with_pre_routing_match_those_without_it_and_the_probes_are_why() -> None:
    requests = traffic()
    scorer = PreRouteScorer(skipping("hard"))
    skipped = [r for r in requests if scorer.skips(scorer.probability(ask(r.prompt)))]
    assert 500 < len(skipped) < 700  # the hard prompts, and the odd easy one whose n-grams collide with "hard"
    assert sum(1 for r in skipped if r.prompt.startswith("easy")) <= 5
    without, plain = calibrated(requests, pre_routing=False)
    with_probes, routed = calibrated(requests, pre_routing=True)
    kept_only, _ = calibrated([r for r in requests if r not in skipped], pre_routing=False)

    assert routed.routed_past == {"small": len(skipped)}
    assert routed.probe_calls == sum(1 for r in skipped if r.draw < GOAL.shadow_sample_rate)
    assert sum(routed.calibration_samples.values()) == sum(plain.calibration_samples.values())

    assert abs(bin_index(with_probes) - bin_index(without)) <= 1
    # Without the probes the samples would hold only the kept prompts: a far bolder threshold, the bias removed.
    assert bin_index(without) - bin_index(kept_only) >= 3
    assert kept_only < without
