"""Probe records: built and redacted like every record, written to Parquet and read back, shown by `kascade log`,
and taken by `kascade distill` as teacher data (once per request)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from kascade.api.escalation_record import EscalationRecord, ModelIdentity, Probe, ProbeDraw, RecordKind
from kascade.distillation.examples import examples_of_log
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.escalation.keeping import record_kind
from kascade.runtime.escalation.records import AnswerSeen, DeclinedSeen, EscalationSeen, build_record
from kascade.runtime.escalation.redaction import Redactor
from kascade.runtime.escalation.segments import SegmentStore, arrow_schema, records_table
from kascade.runtime.escalation.view import kind_note, log_stats

SMALL = ModelIdentity(tier="small", served_model="small-model")
LARGE = ModelIdentity(tier="large", served_model="large-model")
SEGMENT = "escalations-20261201T000000Z-test-000001.parquet"


def _probe_seen(*, kept: bool = True, draw: ProbeDraw = ProbeDraw.calibration, agreed: bool | None = True) -> Any:
    return EscalationSeen(
        cascade="demo",
        endpoint=Endpoint.chat,
        body={"messages": [{"role": "user", "content": "Mail ada@example.org the proof"}]},
        declined=(DeclinedSeen(SMALL, "ask ada@example.org", 0.8 if kept else 0.2, "geometricMean", 0.5),),
        answered_by=LARGE,
        answer=AnswerSeen(text="Here is the proof.", finish_reason="stop"),
        input_tokens=9,
        output_tokens=4,
        at=datetime(2026, 12, 1, tzinfo=UTC),
        kind=RecordKind.probe,
        agreed=agreed,
        probe=Probe(kept=kept, keep_probability=0.031, draw=draw, rate=0.5),
    )


def test_a_probe_record_holds_the_decision_and_draw_and_is_redacted_like_any_record() -> None:
    record = build_record(_probe_seen(), Redactor.with_built_ins())
    assert record.kind is RecordKind.probe and record.agreed is True
    assert record.probe == Probe(kept=True, keep_probability=0.031, draw=ProbeDraw.calibration, rate=0.5)
    assert "ada@example.org" not in record.request and "ada@example.org" not in record.declined[0].text
    assert record.redacted and record.answered_by == LARGE and record.answer == "Here is the proof."


def test_the_keeper_names_a_probe_by_what_it_carries() -> None:
    probe = Probe(kept=False, keep_probability=0.1, draw=ProbeDraw.record, rate=0.05)
    assert record_kind(None, probe) is RecordKind.probe and record_kind(True, probe) is RecordKind.probe
    assert record_kind(None, None) is RecordKind.escalation and record_kind(False, None) is RecordKind.shadow


def test_a_probe_record_and_only_a_probe_record_carries_its_probe() -> None:
    fields = build_record(_probe_seen(), Redactor.with_built_ins()).model_dump()
    with pytest.raises(ValueError, match="a probe record, and only one, carries `probe`"):
        EscalationRecord.model_validate({**fields, "probe": None})
    with pytest.raises(ValueError, match="a probe record, and only one, carries `probe`"):
        EscalationRecord.model_validate({**fields, "kind": "escalation"})


def test_probe_records_go_through_parquet_and_records_of_the_first_schema_still_read(tmp_path: Path) -> None:
    probe = build_record(_probe_seen(kept=False, draw=ProbeDraw.record, agreed=None), Redactor.with_built_ins())
    store = SegmentStore(str(tmp_path))
    store.write(SEGMENT, records_table([probe]))
    assert list(store.records()) == [probe]
    # A segment of schema version 1: no probe column, no probe kind.
    escalation = probe.model_copy(update={"kind": RecordKind.escalation, "probe": None, "schema_version": 1})
    old = records_table([escalation]).drop_columns(["probe"])
    assert "probe" not in old.schema.names and arrow_schema().field("probe").type == pa.struct(
        [("kept", pa.bool_()), ("keep_probability", pa.float64()), ("draw", pa.string()), ("rate", pa.float64())]
    )
    store.write("escalations-20261130T000000Z-old-000001.parquet", old)
    first, second = store.records()
    assert first == escalation and first.probe is None and second == probe


def test_kascade_log_counts_and_shows_a_probe_with_its_decision(tmp_path: Path) -> None:
    from kascade.cli import app

    records = [build_record(_probe_seen(kept=kept), Redactor.with_built_ins()) for kept in (True, False, True)]
    SegmentStore(str(tmp_path)).write(SEGMENT, records_table(records))
    stats = log_stats(records)
    assert stats.by_kind == {"probe": 3}
    assert stats.reasons == {
        "small: routed past, probed (calibration): kept": 2,
        "small: routed past, probed (calibration): declined": 1,
    }
    assert kind_note(records[0]) == (
        "probe: routed past at pre-route probability 0.0310, drawn for calibration at 0.5, agreed with the last tier"
    )
    runner = CliRunner()
    shown = runner.invoke(app, ["log", "show", str(tmp_path), "--limit", "2"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "probe: routed past" in shown.output
    assert "geometricMean 0.800 ≥ 0.5" in shown.output and "geometricMean 0.200 < 0.5" in shown.output
    counted = runner.invoke(app, ["log", "stats", str(tmp_path)], env={"COLUMNS": "200"})
    assert counted.exit_code == 0 and "probe 3" in counted.output and "probed (calibration): kept" in counted.output


def _record(kind: RecordKind, prompt: str, number: int) -> EscalationRecord:
    probe = Probe(kept=False, keep_probability=0.1, draw=ProbeDraw.record, rate=0.05)
    return EscalationRecord(
        id=f"r{number}",
        kind=kind,
        cascade="demo",
        recorded_at=datetime(2026, 12, 1, tzinfo=UTC),
        endpoint="chat",
        request=json.dumps({"messages": [{"role": "user", "content": prompt}]}),
        declined=[{"model": SMALL, "text": "?", "score": 0.1, "method": "geometricMean", "threshold": 0.5}],
        answered_by=LARGE,
        answer=f"the answer to {prompt}",
        probe=probe if kind is RecordKind.probe else None,
    )


def test_a_probe_is_a_teacher_example_once_per_request() -> None:
    records = [
        _record(RecordKind.escalation, "what is 2+2?", 1),
        _record(RecordKind.probe, "prove the lemma", 2),  # routed past the small tier: the only record of it
        _record(RecordKind.probe, "what is 2+2?", 3),  # the same request an escalation record holds already
    ]
    examples = examples_of_log(records)
    assert [example.id for example in examples] == ["r1", "r2"]
    assert examples[1].target == "the answer to prove the lemma"
    assert examples[1].prompt == [{"role": "user", "content": "prove the lemma"}]
