"""A run refits the student tier's pre-route score from the log: escalations declined, shadow samples kept, and
the probes of the requests the serving score skipped.

The refit is written only when its kept-skipped bound is certified within maxKeptSkipped on prompts it was not
fitted on; the result carries it, the status maps it, and a promotion serves it with the new student. With the
probes the bound holds on traffic the serving score skipped a share of; without them it does not.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from kascade.api.distill_settings import DistillSettings
from kascade.api.escalation_record import EscalationRecord, ModelIdentity, Probe, ProbeDraw, RecordKind
from kascade.api.pre_route import PreRoute
from kascade.distillation.pre_route_refit import kept_by, refit_label, refit_pre_route
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


def _probe(prompt: str, *, kept: bool, number: int, draw: ProbeDraw, agreed: bool | None) -> EscalationRecord:
    """A probe record: the request was routed past the small tier, which was asked off the path all the same."""
    rate = 0.5 if draw is ProbeDraw.calibration else 0.3
    return record(prompt, kept=kept, number=number).model_copy(
        update={
            "id": f"p-{number}",
            "kind": RecordKind.probe,
            "agreed": agreed,
            "probe": Probe(kept=kept, keep_probability=0.01, draw=draw, rate=rate),
        }
    )


def test_a_probe_is_labelled_by_the_tiers_decision_and_kept_only_from_the_calibration_draw() -> None:
    calibration = _probe("q", kept=True, number=1, draw=ProbeDraw.calibration, agreed=False)
    assert kept_by(calibration, "small") is True and refit_label(calibration, "small") is True
    for_the_record = _probe("q", kept=True, number=2, draw=ProbeDraw.record, agreed=None)
    assert kept_by(for_the_record, "small") is True and refit_label(for_the_record, "small") is None
    unjudged = _probe("q", kept=True, number=3, draw=ProbeDraw.calibration, agreed=None)
    assert refit_label(unjudged, "small") is None  # a shadow sample with no verdict keeps no record either
    declined = _probe("q", kept=False, number=4, draw=ProbeDraw.record, agreed=None)
    assert refit_label(declined, "small") is False  # the declined class takes every declined record
    assert refit_label(record("q", kept=True, number=5), "small") is True
    assert refit_label(record("q", kept=False, number=6), "small") is False


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


# -- the bias the probes remove ------------------------------------------------------------------

LEVELS = 10  # a prompt's difficulty: how often it says "tricky"
SERVED_SKIP_FROM = 7  # the serving score routes levels 7-9 past the small tier
RATE = 0.5  # online calibration's shadowSampleRate
PROBE_RATE = 0.8
FILLER = "river stone cloud lamp green table orange music window paper letter garden".split()


@dataclass(frozen=True)
class Request:
    prompt: str
    level: int
    kept: bool  # whether the small tier's accept rule would keep its answer
    draw: float  # the request's uniform draw (shadow sampling, and the probe's when skipped)


def traffic(count: int, seed: int) -> list[Request]:
    """Requests whose chance of being kept falls with their level (0.95 at 0, 0.05 at 9)."""
    rng = random.Random(seed)
    requests = []
    for index in range(count):
        level = rng.randrange(LEVELS)
        text = " ".join(["tricky"] * level + rng.sample(FILLER, 3)) + f" ({index})"
        requests.append(Request(text, level, rng.random() < 0.95 - 0.1 * level, rng.random()))
    return requests


def served_log(requests: list[Request], *, probes: bool) -> list[EscalationRecord]:
    """What a router kept of this traffic while its score skipped levels 7-9: escalations, shadow samples, and
    (with `probes`) the probes of the skipped requests, both draws."""
    records = []
    for number, request in enumerate(requests):
        if request.level >= SERVED_SKIP_FROM:
            if probes and request.draw < PROBE_RATE:
                draw = ProbeDraw.calibration if request.draw < RATE else ProbeDraw.record
                agreed = True if draw is ProbeDraw.calibration else None
                records.append(_probe(request.prompt, kept=request.kept, number=number, draw=draw, agreed=agreed))
        elif not request.kept:
            records.append(record(request.prompt, kept=False, number=number))
        elif request.draw < RATE:
            records.append(record(request.prompt, kept=True, number=number))
    return records


def kept_skipped_on(pre_route: PreRoute, requests: list[Request]) -> tuple[float, float]:
    """(share of the kept requests the score skips, share of all requests it skips): the truth on new traffic."""
    scorer = PreRouteScorer(pre_route)
    skipped = [
        scorer.skips(scorer.probability({"messages": [{"role": "user", "content": r.prompt}]})) for r in requests
    ]
    kept = [s for s, r in zip(skipped, requests, strict=True) if r.kept]
    return sum(kept) / len(kept), sum(skipped) / len(skipped)


def test_with_probes_the_refits_bound_holds_where_skipping_was_on_and_without_them_it_is_too_bold() -> None:
    settings = _settings(max_kept_skipped=0.05, confidence=0.9, pre_route_dimensions=512)
    served, held_out = traffic(4000, seed=19), traffic(5000, seed=20)
    with_probes = refit_pre_route(settings, served_log(served, probes=True), source="test log")
    without = refit_pre_route(settings, served_log(served, probes=False), source="test log")
    assert with_probes is not None and with_probes.pre_route is not None, with_probes
    assert without is not None and without.pre_route is not None, without
    truth, saved = kept_skipped_on(with_probes.pre_route, held_out)
    assert truth <= 0.05 and saved > 0.1  # the bound holds, and the refit still routes a share past the tier
    biased, _ = kept_skipped_on(without.pre_route, held_out)
    assert without.pre_route.skip_below > with_probes.pre_route.skip_below
    assert biased > 2 * 0.05  # certified at 0.05 on the prompts the serving score let through, far above it on all
