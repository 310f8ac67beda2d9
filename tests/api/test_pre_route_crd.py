"""A tier's preRoute is validated twice, by the API server (the CRD's CEL rules) and by the model, alike."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from crd_testkit import refusals
from pydantic import ValidationError

from kascade.api.modelcascade import ModelCascade
from kascade.api.pre_route import PreRoute

FITTED_SIZE = 4096
GOOD: dict[str, Any] = {
    "apiVersion": "kascade.dev/v1alpha1",
    "kind": "ModelCascade",
    "metadata": {"name": "routed", "namespace": "default"},
    "spec": {
        "task": "chat",
        "tiers": [
            {
                "name": "small",
                "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
                "accept": {"method": "geometricMean", "threshold": 0.8},
            },
            {"name": "large", "model": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct"}},
        ],
    },
}


def with_pre_route(**fields: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(GOOD)
    manifest["spec"]["tiers"][0]["preRoute"] = {
        "dimensions": FITTED_SIZE,
        "weights": PreRoute.encode_weights([0.01 * (i % 7) for i in range(FITTED_SIZE)]),
        "bias": 0.5,
        "skipBelow": 0.2,
        "maxKeptSkipped": 0.05,
        "probeRate": 0.05,
        "fitted": {"examples": 1200, "heldOutAuroc": 0.77, "keptSkippedBound": 0.048, "source": "eval cache"},
        **fields,
    }
    return manifest


def test_a_fitted_size_pre_route_is_accepted_by_the_server_and_the_model() -> None:
    manifest = with_pre_route()
    assert refusals(manifest) == []
    tier = ModelCascade.model_validate(manifest).spec.tiers[0]
    assert tier.pre_route is not None and len(tier.pre_route.weight_values()) == FITTED_SIZE


def test_weights_of_another_dimension_are_refused_by_both() -> None:
    manifest = with_pre_route(weights=PreRoute.encode_weights([0.0] * (FITTED_SIZE - 1)))
    assert any("preRoute.weights must be base64" in refusal for refusal in refusals(manifest))
    with pytest.raises(ValidationError, match=f"got {FITTED_SIZE - 1} values for {FITTED_SIZE} dimensions"):
        ModelCascade.model_validate(manifest)


@pytest.mark.parametrize(
    "weights",
    [
        PreRoute.encode_weights([math.nan] + [0.0] * (FITTED_SIZE - 1)),
        "!" * len(with_pre_route()["spec"]["tiers"][0]["preRoute"]["weights"]),
    ],
    ids=["not-finite", "not-base64"],
)
def test_weights_the_server_cannot_decode_are_refused_by_the_model(weights: str) -> None:
    manifest = with_pre_route(weights=weights)
    assert refusals(manifest) == []  # the right length: what CEL checks
    with pytest.raises(ValidationError, match="preRoute.weights must be base64"):
        ModelCascade.model_validate(manifest)
