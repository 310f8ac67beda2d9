"""A run refits the student tier's pre-route score from the log: escalations declined, shadow samples kept.

The refit is written only when its kept-skipped bound is certified within maxKeptSkipped on prompts it was not
fitted on; the result carries it, the status maps it, and a promotion serves it with the new student.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from kascade.api.distill_settings import DistillSettings
from kascade.api.escalation_record import EscalationRecord, ModelIdentity, RecordKind
from kascade.api.pre_route import PreRoute
from kascade.distillation.pre_route_refit import kept_by, refit_pre_route
from kascade.distillation.result import DistillResult
from kascade.distillation.status import succeeded
from kascade.runtime.scoring.pre_route import PreRouteScorer

SMALL = ModelIdentity(tier="small", served_model="small")
MIDDLE = ModelIdentity(tier="middle", served_model="middle")
LARGE = ModelIdentity(tier="large", served_model="large")
KEPT_PROMPTS = [
    f"Say hello to {name} in {tongue}."
    for name in ("Ann", "Bo", "Cy", "Di", "Ed")
    for tongue in ("French", "Dutch", "Greek", "Welsh")
]
DECLINED_PROMPTS = [f"Prove that {n} squared plus {n + 1} is odd, step by step." for n in range(20)]


def _answer(model: ModelIdentity) -> dict[str, Any]:
    return {"model": model, "text": "...", "score": 0.5, "method": "geometricMean", "threshold": 0.7}


def record(prompt: str, *, kept: bool, number: int, tiers: tuple[ModelIdentity, ...] = (SMALL,)) -> EscalationRecord:
    """A shadow record (the last of `tiers` accepted) or an escalation (each of `tiers` declined)."""
    return EscalationRecord(
        id=f"{'k' if kept else 'd'}-{number}",
        kind=RecordKind.shadow if kept else RecordKind.escalation,
        cascade="chat",
        recorded_at=datetime(2026, 12, 1, tzinfo=UTC),
        endpoint="chat",
        request=json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": 8}),
        declined=[_answer(tier) for tier in tiers],
        answered_by=LARGE,
        answer="Paris.",
        agreed=True if kept else None,
    )


def synthetic_log(copies: int) -> list[EscalationRecord]:
    """`copies` x 20 kept (shadow) and 20 declined prompts, told apart by their words."""
    kept = [record(p, kept=True, number=n * 100 + i) for n in range(copies) for i, p in enumerate(KEPT_PROMPTS)]
    declined = [
        record(p, kept=False, number=n * 100 + i) for n in range(copies) for i, p in enumerate(DECLINED_PROMPTS)
    ]
    return kept + declined


def _settings(**given: Any) -> DistillSettings:
    base = {"student": "s", "data": "log", "out": "o", "pre_route_tier": "small", "pre_route_dimensions": 256}
    return DistillSettings.model_validate(base | given)


def test_the_log_says_which_requests_the_tier_kept() -> None:
    assert kept_by(record("q", kept=True, number=1), "small") is True
    assert kept_by(record("q", kept=False, number=2), "small") is False
    # A shadow sample that the middle tier accepted: the small tier declined it before.
    accepted_later = record("q", kept=True, number=3, tiers=(SMALL, MIDDLE))
    assert kept_by(accepted_later, "small") is False and kept_by(accepted_later, "middle") is True
    assert kept_by(record("q", kept=False, number=4, tiers=(MIDDLE,)), "small") is None  # the tier was not asked


def test_a_refit_from_escalations_and_shadow_samples_is_certified_and_validates() -> None:
    refit = refit_pre_route(_settings(max_kept_skipped=0.1, confidence=0.9), synthetic_log(8), source="test log")
    assert refit is not None and refit.pre_route is not None, refit
    pre_route = PreRoute.model_validate(refit.pre_route.model_dump(by_alias=True))  # the CRD's own rules, too
    assert pre_route.dimensions == 256 and pre_route.skip_below > 0 and pre_route.max_kept_skipped == 0.1
    assert pre_route.fitted is not None and pre_route.fitted.kept_skipped_bound is not None
    assert pre_route.fitted.kept_skipped_bound <= 0.1 and pre_route.fitted.source == "test log"
    assert refit.fitted_on + refit.certified_on == 320 and refit.kept > 0
    assert "refitted on" in refit.message
    # It skips the prompts the tier declined and keeps asking it the ones it kept.
    scorer = PreRouteScorer(pre_route)
    skipped = [scorer.skips(scorer.probability({"messages": [{"role": "user", "content": p}]})) for p in KEPT_PROMPTS]
    declined = [
        scorer.skips(scorer.probability({"messages": [{"role": "user", "content": p}]})) for p in DECLINED_PROMPTS
    ]
    assert sum(declined) > len(declined) / 2 and sum(skipped) <= 2


def test_a_refit_whose_bound_cannot_be_certified_is_not_written_and_says_why() -> None:
    refit = refit_pre_route(_settings(max_kept_skipped=0.01, confidence=0.99), synthetic_log(1), source="test log")
    assert refit is not None and refit.pre_route is None
    assert refit.message.startswith("the refitted pre-route score is not written: ") and "too few" in refit.message
    nothing = refit_pre_route(_settings(pre_route_tier="middle"), synthetic_log(1), source="test log")
    assert nothing is not None and nothing.pre_route is None and "no record of the log" in nothing.message
    assert refit_pre_route(_settings(pre_route_tier=None), synthetic_log(1), source="test log") is None


def _write_log(folder: Path, records: list[EscalationRecord]) -> Path:
    from kascade.runtime.escalation.segments import SegmentStore, records_table

    folder.mkdir(parents=True)
    SegmentStore(str(folder)).write("escalations-20261201T000000Z-test-000001.parquet", records_table(records))
    return folder


def test_a_run_with_a_pre_routed_tier_refits_its_score_and_the_status_carries_it(
    tiny_small_lm_dir: Path, tmp_path: Path
) -> None:
    from kascade.cli import app

    log = _write_log(tmp_path / "log", synthetic_log(8))
    out = tmp_path / "student"
    args = ["--student", str(tiny_small_lm_dir), "--data", str(log), "--out", str(out), "--steps", "2"]
    args += ["--batch-size", "4", "--eval-generate", "2", "--max-new-tokens", "3", "--held-out", "0.1"]
    args += ["--pre-route-tier", "small", "--pre-route-dimensions", "256", "--max-kept-skipped", "0.1"]
    result = CliRunner().invoke(app, ["distill", *args, "--confidence", "0.9"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    provenance = DistillResult.model_validate_json((out / "provenance.json").read_text())
    assert provenance.pre_route is not None and provenance.pre_route.pre_route is not None
    assert provenance.gate.pre_route == provenance.pre_route.message and "refitted on" in result.output
    patch = succeeded(provenance, steps=2, loss=None, model="pvc://students/s1", at="2026-12-01T00:00:00Z")
    status = patch["status"]
    assert PreRoute.model_validate(status["preRoute"]) == provenance.pre_route.pre_route
    assert status["gate"]["preRoute"] in status["message"]


def test_a_dataset_has_no_decisions_to_refit_from() -> None:
    from kascade.distillation.pre_route_refit import refit_from_log

    refit = refit_from_log(_settings(data="answers.jsonl"))
    assert refit is not None and refit.pre_route is None and "from a log" in refit.message
