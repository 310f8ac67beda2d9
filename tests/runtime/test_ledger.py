"""Cost accounting: actual cost, the all-last-tier baseline, savings and the snapshot."""

from __future__ import annotations

import random
from datetime import datetime

import pytest

from kascade.api.modelcascade import Price
from kascade.runtime.baseline_estimate import estimated_baseline
from kascade.runtime.ledger import Ledger, RequestCost, RequestOutcome, TierCall, usage_cost

# small: $0.10 / $0.20 per million in/out; large: $1 / $2.
SMALL = Price(input_per_million=0.1, output_per_million=0.2)
LARGE = Price(input_per_million=1.0, output_per_million=2.0)


def make_ledger(**kwargs) -> Ledger:
    return Ledger({"small": SMALL, "large": LARGE}, **kwargs)


def accepted_by_small() -> RequestOutcome:
    return RequestOutcome(
        answered_by="small",
        calls=(TierCall("small", 1000, 500, 0.2, ok=True, confidence=0.9),),
        escalated=False,
    )


def escalated_to_large() -> RequestOutcome:
    return RequestOutcome(
        answered_by="large",
        calls=(
            TierCall("small", 1000, 500, 0.2, ok=True, confidence=0.3),
            TierCall("large", 1000, 400, 1.5, ok=True),
        ),
        escalated=True,
    )


def failed_everywhere() -> RequestOutcome:
    return RequestOutcome(
        answered_by=None,
        calls=(TierCall("small", 0, 0, 0.1, ok=False), TierCall("large", 0, 0, 0.3, ok=False)),
        escalated=True,
    )


def test_usage_cost_is_per_million() -> None:
    assert usage_cost(LARGE, 1_000_000, 0) == pytest.approx(1.0)
    assert usage_cost(LARGE, 0, 1_000_000) == pytest.approx(2.0)
    assert usage_cost(SMALL, 1000, 500) == pytest.approx((1000 * 0.1 + 500 * 0.2) / 1e6)
    assert usage_cost(Price(), 123, 456) == 0.0


def test_an_accepted_request_saves() -> None:
    cost = make_ledger().record(accepted_by_small())
    # actual (100 + 100) / 1e6; baseline on large (1000 + 1000) / 1e6
    assert cost.actual == pytest.approx(2e-4)
    assert cost.baseline == pytest.approx(2e-3)
    assert cost.saved == pytest.approx(1.8e-3)


def test_an_escalated_request_pays_both_calls_and_saves_negatively() -> None:
    cost = make_ledger().record(escalated_to_large())
    # small 2e-4 wasted + large (1000 + 800) / 1e6; the baseline is the large call alone
    assert cost.actual == pytest.approx(2e-4 + 1.8e-3)
    assert cost.baseline == pytest.approx(1.8e-3)
    assert cost.saved == pytest.approx(-2e-4)


def test_a_request_the_last_tier_answered_directly_saves_nothing() -> None:
    outcome = RequestOutcome("large", (TierCall("large", 1000, 400, 1.0, ok=True),), escalated=False)
    assert make_ledger().record(outcome) == RequestCost(
        actual=pytest.approx(1.8e-3), baseline=pytest.approx(1.8e-3), saved=pytest.approx(0.0)
    )


def test_a_failed_request_has_no_baseline_but_pays_its_calls() -> None:
    ledger = make_ledger()
    assert ledger.record(failed_everywhere()) == RequestCost(actual=0.0, baseline=0.0, saved=0.0)
    half_failed = RequestOutcome(
        answered_by=None,
        calls=(TierCall("small", 1000, 500, 0.2, ok=True, confidence=0.1), TierCall("large", 0, 0, 60.0, ok=False)),
        escalated=True,
    )
    cost = ledger.record(half_failed)
    assert cost.actual == pytest.approx(2e-4)
    assert cost.baseline == 0.0
    assert cost.saved == pytest.approx(-2e-4)
    snapshot = ledger.snapshot()
    assert snapshot["requests"] == 2
    assert snapshot["failed"] == 2
    assert snapshot["escalations"] == 2
    assert snapshot["answeredBy"] == {"small": 0, "large": 0}
    assert snapshot["tiers"]["large"]["errors"] == 2
    assert snapshot["tiers"]["small"]["errors"] == 1


def test_a_retried_answer_is_priced_by_its_successful_call() -> None:
    outcome = RequestOutcome(
        answered_by="small",
        calls=(TierCall("small", 0, 0, 5.0, ok=False), TierCall("small", 1000, 500, 0.2, ok=True, confidence=0.95)),
        escalated=False,
    )
    cost = make_ledger().record(outcome)
    assert cost.baseline == pytest.approx(2e-3)
    assert cost.actual == pytest.approx(2e-4)


def test_currencies_must_match() -> None:
    with pytest.raises(ValueError, match="currency"):
        Ledger({"small": SMALL, "large": Price(currency="EUR", input_per_million=1.0)})


def test_no_tiers_is_an_error() -> None:
    with pytest.raises(ValueError):
        Ledger({})


def test_unknown_tiers_are_refused_without_a_half_record() -> None:
    ledger = make_ledger()
    before = ledger.snapshot()
    bad_call = RequestOutcome(
        "small", (TierCall("small", 1, 1, 0.1, ok=True), TierCall("medium", 1, 1, 0.1, ok=True)), False
    )
    bad_answer = RequestOutcome("medium", (TierCall("small", 1, 1, 0.1, ok=True),), True)
    negative = RequestOutcome("small", (TierCall("small", -1, 1, 0.1, ok=True),), False)
    for outcome in (bad_call, bad_answer, negative):
        with pytest.raises(ValueError):
            ledger.record(outcome)
    assert ledger.snapshot() == before


def test_snapshot_keys_are_exactly_as_specified() -> None:
    snapshot = make_ledger().snapshot()
    assert set(snapshot) == {
        "processId",
        "startedAt",
        "updatedAt",
        "currency",
        "requests",
        "failed",
        "escalations",
        "answeredBy",
        "tiers",
        "cost",
        "escalationsLogged",
        "escalationLogDropped",
        "shadowCalls",
        "shadowCost",
        "calibrationSamples",
        "calibrationAgreed",
        "baselineTokens",
        *("routedPast", "routedPastSaved", "probeCalls", "probeCost"),  # pre-routing
        *("judgeCalls", "judgeCost", "judgeFailures", "judgeSkipped"),  # matcher judge
        *("admitted", "rejected", "rejectedAtEscalation", "keptUnderLoad"),  # admission control
        *("skippedNoReplica", "coldStartWaits", "coldStartWaitSeconds"),  # tiers scaled to zero
    }
    assert set(snapshot["tiers"]) == {"small", "large"}
    for tier in snapshot["tiers"].values():
        assert set(tier) == {"calls", "errors", "inputTokens", "outputTokens", "cost", "latencySecondsSum"}
    assert set(snapshot["cost"]) == {"actual", "baseline", "saved", "savedPercent"}
    assert snapshot["answeredBy"] == {"small": 0, "large": 0}
    assert snapshot["currency"] == "USD"


def test_snapshot_totals() -> None:
    times = iter([1_700_000_000.0, 1_700_000_010.5, 1_700_000_020.25])
    ledger = make_ledger(process_id="router-a", clock=lambda: next(times))
    ledger.record(accepted_by_small())
    ledger.record(escalated_to_large())
    snapshot = ledger.snapshot()
    assert snapshot["processId"] == "router-a"
    assert snapshot["startedAt"] == "2023-11-14T22:13:20.000Z"
    assert snapshot["updatedAt"] == "2023-11-14T22:13:40.250Z"
    assert datetime.fromisoformat(snapshot["updatedAt"]).utcoffset().total_seconds() == 0
    assert snapshot["requests"] == 2
    assert snapshot["failed"] == 0
    assert snapshot["escalations"] == 1
    assert snapshot["answeredBy"] == {"small": 1, "large": 1}
    assert snapshot["tiers"]["small"] == {
        "calls": 2,
        "errors": 0,
        "inputTokens": 2000,
        "outputTokens": 1000,
        "cost": pytest.approx(4e-4),
        "latencySecondsSum": pytest.approx(0.4),
    }
    assert snapshot["tiers"]["large"]["calls"] == 1
    assert snapshot["tiers"]["large"]["cost"] == pytest.approx(1.8e-3)
    # actual 2e-4 + 2e-3; baseline 2e-3 + 1.8e-3
    assert snapshot["cost"]["actual"] == pytest.approx(2.2e-3)
    assert snapshot["cost"]["baseline"] == pytest.approx(3.8e-3)
    assert snapshot["cost"]["saved"] == pytest.approx(1.6e-3)
    assert snapshot["cost"]["savedPercent"] == pytest.approx(100 * 1.6 / 3.8)


def test_saved_percent_is_zero_without_a_baseline() -> None:
    ledger = make_ledger()
    ledger.record(failed_everywhere())
    assert ledger.snapshot()["cost"]["savedPercent"] == 0.0


def test_process_id_defaults_to_a_fresh_uuid() -> None:
    first, second = make_ledger().snapshot()["processId"], make_ledger().snapshot()["processId"]
    assert first != second
    assert len(first) == 32
    int(first, 16)


def test_a_clock_stepping_back_does_not_move_updated_at_back() -> None:
    times = iter([100.0, 200.0, 150.0])
    ledger = make_ledger(clock=lambda: next(times))
    ledger.record(accepted_by_small())
    ledger.record(accepted_by_small())
    assert ledger.snapshot()["updatedAt"].startswith("1970-01-01T00:03:20")


def _counters(snapshot: dict) -> list[float]:
    values = [snapshot["requests"], snapshot["failed"], snapshot["escalations"], *snapshot["answeredBy"].values()]
    for tier in snapshot["tiers"].values():
        values += [
            tier["calls"],
            tier["errors"],
            tier["inputTokens"],
            tier["outputTokens"],
            tier["cost"],
            tier["latencySecondsSum"],
        ]
    values += [snapshot["cost"]["actual"], snapshot["cost"]["baseline"]]
    return values


def test_snapshot_is_monotonic_over_many_records() -> None:
    rng = random.Random(7)
    ledger = make_ledger()
    previous = ledger.snapshot()
    for _ in range(500):
        small = TierCall(
            "small", rng.randint(0, 4000), rng.randint(0, 800), rng.uniform(-0.01, 2.0), ok=rng.random() > 0.1
        )
        large = TierCall(
            "large", rng.randint(0, 4000), rng.randint(0, 800), rng.uniform(0.0, 5.0), ok=rng.random() > 0.1
        )
        shape = rng.choice(["accepted", "escalated", "failed"])
        if shape == "accepted" and small.ok:
            outcome = RequestOutcome("small", (small,), False)
        elif shape == "escalated" and large.ok:
            outcome = RequestOutcome("large", (small, large), True)
        else:
            outcome = RequestOutcome(None, (small, large), True)
        cost = ledger.record(outcome)
        assert cost.actual >= 0 and cost.baseline >= 0
        current = ledger.snapshot()
        assert all(now >= before for now, before in zip(_counters(current), _counters(previous), strict=True))
        assert current["updatedAt"] >= previous["updatedAt"]
        previous = current
    assert previous["requests"] == 500
    assert previous["failed"] + sum(previous["answeredBy"].values()) == 500


def test_shadow_calls_are_paid_for_and_measure_the_last_tiers_token_counts() -> None:
    ledger = make_ledger()
    for _ in range(40):
        ledger.record(accepted_by_small())  # 1000 in, 500 out, priced at the large tier for the baseline
    before = ledger.counter_slot()
    for _ in range(30):  # on the same requests the large tier answers twice as long
        ledger.record_shadow(TierCall("large", 1000, 1000, 0.5, ok=True), (1000, 500))
    slot = ledger.counter_slot()
    shadow = 30 * usage_cost(LARGE, 1000, 1000)
    assert slot.shadow_calls == 30 and slot.shadow_cost == pytest.approx(shadow)
    assert slot.cost.actual == pytest.approx(before.cost.actual + shadow) and slot.cost.baseline == before.cost.baseline
    assert slot.answered_by == before.answered_by and slot.tiers["large"].calls == 30
    assert slot.baseline_tokens == {
        "acceptedInput": 40_000,
        "acceptedOutput": 20_000,
        "shadowAnsweredInput": 30_000,
        "shadowAnsweredOutput": 15_000,
        "shadowLastInput": 30_000,
        "shadowLastOutput": 30_000,
    }
    estimate = estimated_baseline(slot.cost.baseline, slot.baseline_tokens, slot.shadow_calls, LARGE)
    assert estimate is not None and estimate.output_ratio == 2.0 and estimate.input_ratio == 1.0
    # The accepted answers' output, priced at the large tier, counts twice: 40 x (1000 in + 2 x 500 out).
    assert estimate.baseline == pytest.approx(40 * usage_cost(LARGE, 1000, 1000))
    assert estimated_baseline(slot.cost.baseline, slot.baseline_tokens, 29, LARGE) is None  # too few samples
    with pytest.raises(ValueError, match="last tier"):
        ledger.record_shadow(TierCall("small", 1, 1, 0.1, ok=True), (1, 1))


def test_agreement_pairs_are_counted_per_score_bin() -> None:
    ledger = make_ledger()
    ledger.note_agreement("small@0.9", agreed=True)
    ledger.note_agreement("small@0.9", agreed=False)
    ledger.note_agreement("small@0.2", agreed=False)
    slot = ledger.counter_slot()
    assert slot.calibration_samples == {"small@0.9": 2, "small@0.2": 1} and slot.calibration_agreed == {"small@0.9": 1}


def test_judge_calls_are_paid_in_actual_apart_from_the_tiers_and_their_failures_counted() -> None:
    ledger = make_ledger()
    ledger.record(accepted_by_small())
    before = ledger.counter_slot()
    judged = usage_cost(LARGE, 300, 1)
    ledger.record_judge_call(judged, verdict=True)
    ledger.record_judge_call(judged, verdict=False)  # answered, but neither yes nor no: paid, and a failure
    ledger.record_judge_call(0.0, verdict=False)  # unreachable: nothing to pay
    ledger.note_judge_skipped()
    slot = ledger.counter_slot()
    assert slot.judge_calls == 3 and slot.judge_failures == 2 and slot.judge_skipped == 1
    assert slot.judge_cost == pytest.approx(2 * judged)
    assert slot.cost.actual == pytest.approx(before.cost.actual + 2 * judged)  # real spend: saved is net of it
    assert slot.cost.baseline == before.cost.baseline and slot.tiers == before.tiers and slot.shadow_calls == 0
    assert slot.figures().judge_cost == slot.judge_cost  # folded by the operator like every loop count
    with pytest.raises(ValueError, match="less than 0"):
        ledger.record_judge_call(-1.0, verdict=True)
