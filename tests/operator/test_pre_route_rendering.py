"""Pre-routing in the cluster: the router's ConfigMap carries each tier's preRoute; the fold shows what it did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kascade.api.modelcascade import ModelCascade, Price
from kascade.api.pre_route import PreRoute
from kascade.operator.build_router import build_router_config, build_router_configmap
from kascade.operator.counters import apply_merge_patch, fold_replica_counters
from kascade.operator.settings import OperatorSettings
from kascade.runtime.config import RouterConfig
from kascade.runtime.ledger import Ledger, RequestOutcome, TierCall

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = OperatorSettings()
FITTED_SIZE = 4096


def pre_route() -> dict[str, Any]:
    weights = [((index * 37) % 101 - 50) / 100 for index in range(FITTED_SIZE)]
    return {
        "dimensions": FITTED_SIZE,
        "weights": PreRoute.encode_weights(weights),
        "bias": -0.25,
        "skipBelow": 0.3,
        "probeRate": 0.1,
        "fitted": {"examples": 500, "heldOutAuroc": 0.81, "source": "kascade calibrate"},
    }


def pre_routed_flagship() -> ModelCascade:
    body = yaml.safe_load((EXAMPLES / "chat-vllm-gpu.yaml").read_text())
    body["spec"]["tiers"][0]["preRoute"] = pre_route()
    return ModelCascade.model_validate(body)


def test_the_router_configmap_carries_the_tiers_pre_route_as_the_spec_has_it() -> None:
    cascade = pre_routed_flagship()
    configmap = build_router_configmap(cascade, SETTINGS)
    config = RouterConfig.model_validate(yaml.safe_load(configmap["data"]["router.yaml"]))
    assert config == build_router_config(cascade, SETTINGS)
    assert config.tiers[0].pre_route == cascade.spec.tiers[0].pre_route
    assert config.tiers[0].pre_route is not None and len(config.tiers[0].pre_route.weight_values()) == FITTED_SIZE
    assert all(tier.pre_route is None for tier in config.tiers[1:])
    assert len(configmap["data"]["router.yaml"]) < 100_000  # far below a ConfigMap's 1 MiB


def test_the_fold_shows_what_was_routed_past_and_what_the_probes_cost() -> None:
    prices = {"small": Price(input_per_million=0.1, output_per_million=0.2), "large": Price(input_per_million=1.0)}
    ledger = Ledger(prices, process_id="p1")
    ledger.record(RequestOutcome("small", (TierCall("small", 1000, 500, 0.2, ok=True),), escalated=False))
    for _ in range(3):
        ledger.note_routed_past("small")
        ledger.record(RequestOutcome("large", (TierCall("large", 1000, 10, 1.0, ok=True),), escalated=False))
    ledger.record_probe(TierCall("small", 1000, 500, 0.2, ok=True))
    slot = {**ledger.snapshot(), "pod": "router-0"}
    status = {"replicaCounters": {"p1": slot}}

    result = fold_replica_counters(status, {"router-0"}, "2026-12-07T00:00:00Z")
    small_call = 0.1 * 1000 / 1e6 + 0.2 * 500 / 1e6
    assert result.traffic.routed_past == {"small": 3}
    assert result.traffic.probe_calls == 1
    assert abs(result.cost.probe_cost - small_call) < 1e-12
    assert abs(result.cost.routed_past_saved - 3 * small_call) < 1e-12
    written = apply_merge_patch(status, result.status_patch())
    assert written["traffic"]["routedPast"] == {"small": 3} and written["traffic"]["probeCalls"] == 1
    assert written["cost"]["probeCost"] == result.cost.probe_cost
    assert written["cost"]["routedPastSaved"] == result.cost.routed_past_saved
    assert fold_replica_counters(written, {"router-0"}, "2026-12-07T00:01:00Z").status_patch() == result.status_patch()
