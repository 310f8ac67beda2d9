"""The router counter slots are typed from ledger to CRD: the API server keeps a router's slot and refuses a bad one."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kascade.api.counters import CounterSlot, RetiredCounters
from kascade.api.modelcascade import Price
from kascade.operator.counters import fold_replica_counters
from kascade.runtime.cluster_status.report import replica_slot_patch
from kascade.runtime.ledger import Ledger, RequestOutcome, TierCall
from kascade.testing import StandinApiServer

pytestmark = pytest.mark.slow  # the API-server stand-in on loopback

CRDS = Path(__file__).resolve().parents[2] / "crds"
MC = "/apis/kascade.dev/v1alpha1/namespaces/default/modelcascades"
MERGE = {"Content-Type": "application/merge-patch+json"}
PRICES = {"small": Price(input_per_million=0.1), "large": Price(input_per_million=1.0, output_per_million=2.0)}
ESCALATED = RequestOutcome(
    "large", (TierCall("small", 1000, 500, 0.2, ok=True), TierCall("large", 1000, 400, 1.5, ok=True)), escalated=True
)


@pytest.fixture(scope="module")
def api() -> Iterator[httpx.Client]:
    with StandinApiServer(crd_paths=[CRDS]) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


NAMES = itertools.count()


@pytest.fixture
def cascade(api: httpx.Client) -> str:
    """A fresh cascade; its status subresource's path."""
    name = f"slots-{next(NAMES)}"
    body = {
        "apiVersion": "kascade.dev/v1alpha1",
        "kind": "ModelCascade",
        "metadata": {"name": name},
        "spec": {
            "tiers": [
                {"name": "small", "model": {"uri": "hf://org/small"}, "accept": {"threshold": 0.5}},
                {"name": "large", "model": {"uri": "hf://org/large"}},
            ]
        },
    }
    assert api.post(MC, json=body).status_code == 201
    return f"{MC}/{name}/status"


def ledger_slot() -> CounterSlot:
    ledger = Ledger(PRICES, process_id="p1", clock=lambda: 1_750_000_000.0)
    ledger.record(ESCALATED)
    return ledger.counter_slot()


def test_a_routers_slot_is_kept_as_written(api: httpx.Client, cascade: str) -> None:
    patch = replica_slot_patch(ledger_slot(), "chat-router-0")
    response = api.patch(cascade, json=patch, headers=MERGE)
    assert response.status_code == 200, response.text
    assert "warning" not in response.headers  # nothing pruned: every field of the slot is in the schema
    stored = response.json()["status"]["replicaCounters"]["p1"]
    assert stored == patch["status"]["replicaCounters"]["p1"]
    assert CounterSlot.model_validate(stored) == ledger_slot().model_copy(update={"pod": "chat-router-0"})


def test_the_folds_patch_is_accepted(api: httpx.Client, cascade: str) -> None:
    slot = replica_slot_patch(ledger_slot(), "chat-router-0")["status"]["replicaCounters"]
    fold = fold_replica_counters({"replicaCounters": slot}, [], "2026-01-01T00:00:00Z")
    response = api.patch(cascade, json={"status": {"replicaCounters": slot, **fold.status_patch()}}, headers=MERGE)
    assert response.status_code == 200, response.text
    status = response.json()["status"]
    assert status.get("replicaCounters", {}) == {}
    assert RetiredCounters.model_validate(status["retiredCounters"]).requests == 1
    assert status["retiredProcesses"]["p1"]["pod"] == "chat-router-0"


def _malformed(path: str, value: Any) -> dict[str, Any]:
    slot: dict[str, Any] = copy.deepcopy(
        replica_slot_patch(ledger_slot(), "chat-router-0")["status"]["replicaCounters"]
    )
    node = slot["p1"]
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return {"status": {"replicaCounters": slot}}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("requests", "5"),  # a string where a count goes
        ("escalations", -1),  # counts are never negative
        ("failed", 1.5),
        ("answeredBy.small", "x"),
        ("tiers.large.calls", -2),
        ("tiers.small.latencySecondsSum", "slow"),
        ("cost.actual", -0.5),
        ("currency", "dollars"),
        ("tiers", ["small"]),
    ],
)
def test_a_malformed_slot_written_by_hand_is_refused(api: httpx.Client, cascade: str, path: str, value: Any) -> None:
    response = api.patch(cascade, json=_malformed(path, value), headers=MERGE)
    assert response.status_code == 422, response.text
    fields = [cause["field"] for cause in response.json()["details"]["causes"]]
    assert any(
        field.startswith("status.replicaCounters") and field.endswith(path.split(".")[-1]) for field in fields
    ), fields
    assert "replicaCounters" not in (api.get(cascade).json().get("status") or {})


@pytest.mark.parametrize(
    "retired",
    [
        {"retiredCounters": {"requests": -1}},
        {"retiredCounters": {"processes": "two"}},
        {"retiredProcesses": {"p0": {"answeredBy": {"small": -3}}}},
    ],
)
def test_malformed_retired_sums_are_refused(api: httpx.Client, cascade: str, retired: dict[str, Any]) -> None:
    response = api.patch(cascade, json={"status": retired}, headers=MERGE)
    assert response.status_code == 422, response.text


def test_a_newer_routers_extra_field_is_pruned_not_refused(api: httpx.Client, cascade: str) -> None:
    """An unknown field is no error (the server prunes it, with a warning); the older operator's types allow it too."""
    patch = _malformed("shadowSamples", 3)
    response = api.patch(cascade, json=patch, headers=MERGE)
    assert response.status_code == 200, response.text
    assert "shadowSamples" not in response.json()["status"]["replicaCounters"]["p1"]
    assert CounterSlot.model_validate(patch["status"]["replicaCounters"]["p1"]).model_extra == {"shadowSamples": 3}
