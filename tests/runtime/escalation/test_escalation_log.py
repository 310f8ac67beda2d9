"""The escalation log: what a real router keeps of its escalations, how it writes them, and what it never loses."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from kascade.api.escalation_record import SCHEMA_VERSION, EscalationRecord, ModelIdentity
from kascade.api.modelcascade import Accept, Price, StreamingMode
from kascade.runtime.config import EscalationLogConfig
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.escalation.log import EscalationLog
from kascade.runtime.escalation.records import AnswerSeen, EscalationSeen
from kascade.runtime.escalation.segments import SegmentStore, arrow_schema
from kascade.runtime.escalation.writer import SegmentWriter, encode_frame, serve
from kascade.runtime.ledger import Ledger
from kascade.runtime.router import create_router_app
from kascade.runtime.serving import BackgroundServer

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "Write to ada@example.org about it"}]}


def _records(folder: Path) -> list[EscalationRecord]:
    return list(SegmentStore(str(folder)).records())


def _log_config(folder: Path, **settings: Any) -> EscalationLogConfig:
    return EscalationLogConfig(uri=str(folder), **settings)


def test_the_parquet_columns_are_the_record_fields() -> None:
    assert arrow_schema().names == list(EscalationRecord.model_fields)


def test_an_escalated_chat_request_is_kept_with_the_teachers_token_ids_and_tail(
    tmp_path: Path, start_upstream: Any, two_tier_config: Any
) -> None:
    small = start_upstream(model="small-model", token_prob=0.3)  # below 0.5: always escalates
    large = start_upstream(model="large-model", tokens=["Sure", "!"], token_prob=0.8, runner_up_prob=0.1)
    config = two_tier_config(small.url, large.url, escalation_log=_log_config(tmp_path, flush_seconds=0.05))
    with BackgroundServer(create_router_app(config)) as router:
        response = httpx.post(f"{router.url}/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        assert "logprobs" not in response.json()["choices"][0] or response.json()["choices"][0]["logprobs"] is None
        stats = httpx.get(f"{router.metrics_url}/stats").json()
        assert stats["escalationsLogged"] == 1 and stats["escalationLogDropped"] == 0
    assert large.behaviour.last_body["return_tokens_as_token_ids"] is True
    (record,) = _records(tmp_path)
    assert record.answer == "Sure!" and record.endpoint == "chat" and record.cascade == "demo"
    assert record.answered_by == ModelIdentity(tier="large", served_model="large-model")
    assert record.tokens is not None and record.tokens.token_ids == [100, 101]
    assert record.tokens.top_ids == [[100, 1], [101, 1]]
    assert record.tokens.tail_mass == pytest.approx([0.1, 0.1], abs=1e-6)
    (declined,) = record.declined
    assert declined.model.tier == "small" and declined.text == "Hello, world."
    assert declined.score == pytest.approx(0.3) and declined.threshold == 0.5 and declined.method == "geometricMean"
    assert "ada@example.org" not in record.request and "[REDACTED]" in record.request and record.redacted
    assert json.loads(record.request)["messages"][0]["role"] == "user"
    assert record.input_tokens == 7 and record.output_tokens == 2


def test_an_accepted_request_is_not_kept_and_a_streamed_escalation_is(
    tmp_path: Path, start_upstream: Any, two_tier_config: Any
) -> None:
    small = start_upstream(model="small-model", token_prob=0.3)
    large = start_upstream(model="large-model", tokens=["A", "B", "C"])
    config = two_tier_config(
        small.url, large.url, escalation_log=_log_config(tmp_path), streaming={"mode": StreamingMode.buffer}
    )
    with BackgroundServer(create_router_app(config)) as router:
        with httpx.stream("POST", f"{router.url}/v1/chat/completions", json={**CHAT, "stream": True}) as stream:
            assert stream.status_code == 200
            assert "data: [DONE]" in stream.read().decode()
        small.behaviour.token_prob = 0.95  # now the small tier's answer stands
        assert httpx.post(f"{router.url}/v1/chat/completions", json=CHAT).headers["x-kascade-tier"] == "small"
    (record,) = _records(tmp_path)
    assert record.answer == "ABC" and record.tokens is not None and record.tokens.token_ids == [100, 101, 102]
    assert record.finish_reason == "stop"


def test_a_caller_who_asks_for_logprobs_gets_text_and_the_record_keeps_the_answer_without_ids(
    tmp_path: Path, start_upstream: Any, two_tier_config: Any
) -> None:
    small = start_upstream(model="small-model", token_prob=0.3)
    large = start_upstream(model="large-model")
    config = two_tier_config(small.url, large.url, escalation_log=_log_config(tmp_path))
    with BackgroundServer(create_router_app(config)) as router:
        body = {**CHAT, "logprobs": True, "top_logprobs": 1}
        content = httpx.post(f"{router.url}/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"]
        assert [entry["token"] for entry in content] == ["Hello", ",", " world", "."]
        assert all(len(entry["top_logprobs"]) == 1 for entry in content)
    (record,) = _records(tmp_path)
    assert record.answer == "Hello, world." and record.tokens is None


def test_a_classify_escalation_keeps_the_teachers_class_probabilities(
    tmp_path: Path, start_upstream: Any, two_tier_config: Any
) -> None:
    small = start_upstream(model="small-model", class_probs=[0.55, 0.45])
    large = start_upstream(model="large-model", class_probs=[0.1, 0.9])
    config = two_tier_config(
        small.url,
        large.url,
        task="classify",
        accept=Accept(method="maxProb", threshold=0.9),
        escalation_log=_log_config(tmp_path),
    )
    with BackgroundServer(create_router_app(config)) as router:
        assert httpx.post(f"{router.url}/classify", json={"model": "demo", "input": "great"}).status_code == 200
    (record,) = _records(tmp_path)
    assert record.endpoint == "classify" and record.answer == "positive"
    assert record.class_probs == pytest.approx([0.1, 0.9]) and record.declined[0].text == "negative"


def _seen(index: int = 0) -> EscalationSeen:
    return EscalationSeen(
        cascade="demo",
        endpoint=Endpoint.chat,
        body={"messages": [{"role": "user", "content": f"q{index}"}]},
        declined=(),
        answered_by=ModelIdentity(tier="large", served_model="large-model"),
        answer=AnswerSeen(text=f"a{index}"),
        input_tokens=3,
        output_tokens=1,
    )


@pytest.mark.slow  # the writer process
def test_segments_rotate_and_a_clean_stop_writes_what_is_queued(tmp_path: Path) -> None:
    async def run() -> EscalationLog:
        log = EscalationLog(_log_config(tmp_path, segment_records=4, flush_seconds=30), process_id="router-a")
        await log.start()
        for index in range(10):
            assert log.offer(_seen(index))
        await _until(lambda: log.written == 8)  # two full segments go out without waiting for flush_seconds
        assert len(SegmentStore(str(tmp_path)).segments()) == 2
        await log.close()  # the last 2 are flushed
        return log

    log = asyncio.run(run())
    assert log.written == 10 and log.dropped == 0 and log.in_flight == 0
    assert [record.answer for record in _records(tmp_path)] == [f"a{index}" for index in range(10)]
    assert len(SegmentStore(str(tmp_path)).segments()) == 3
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporary left


async def _until(condition: Any, seconds: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the writer process did not get there"
        await asyncio.sleep(0.02)


def _ignores_sigint(pid: int) -> bool:
    """Whether the process has set SIGINT to ignored (Linux: the SigIgn mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask, 16) & (1 << (2 - 1)))  # SIGINT is signal 2


@pytest.mark.slow  # the writer process
def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    ledger = Ledger({"small": Price(), "large": Price()})

    async def run() -> list[bool]:
        log = EscalationLog(_log_config(tmp_path, queue_size=3, flush_seconds=30), process_id="p", ledger=ledger)
        await log.start()
        # A burst the writer cannot keep up with: nothing is reported written between these offers.
        kept = [log.offer(_seen(index)) for index in range(5)]
        await log.close()
        return kept

    assert asyncio.run(run()) == [True, True, True, False, False]
    slot = ledger.counter_slot()
    assert slot.escalations_logged == 3 and slot.escalation_log_dropped == 2
    assert len(_records(tmp_path)) == 3


@pytest.mark.slow  # the writer process
def test_a_writer_that_dies_is_counted_and_replaced_and_a_ctrl_c_does_not_reach_it(tmp_path: Path) -> None:
    import os
    import signal

    ledger = Ledger({"small": Price(), "large": Price()})

    async def run() -> EscalationLog:
        log = EscalationLog(_log_config(tmp_path, flush_seconds=30), process_id="p", ledger=ledger)
        await log.start()
        assert log.offer(_seen(0)) and log.offer(_seen(1))
        first = log.writer_pid
        assert first is not None
        await _until(lambda: _ignores_sigint(first))  # the writer is up (its imports take a while on a busy machine)
        os.kill(first, signal.SIGINT)  # a Ctrl-C in the terminal: the writer ignores it
        await asyncio.sleep(0.3)
        assert log.writer_pid == first
        os.kill(first, signal.SIGKILL)  # the writer is lost with 2 records unwritten
        await _until(lambda: log.writer_pid not in (None, first))
        assert log.offer(_seen(2))
        await log.close()
        return log

    log = asyncio.run(run())
    assert log.dropped == 2 and log.written == 1 and [r.answer for r in _records(tmp_path)] == ["a2"]
    slot = ledger.counter_slot()
    assert slot.escalations_logged == 3 and slot.escalation_log_dropped == 2


def _serve_frames(writer: SegmentWriter, frames: list[EscalationSeen]) -> list[dict[str, int]]:
    """Run the writer process's loop in this process: the frames, then the end of its input."""
    import io
    import os

    read, write = os.pipe()
    os.write(write, encode_frame(frames[:1]) + encode_frame(frames[1:]))
    os.close(write)
    out = io.StringIO()
    try:
        serve(writer, read, out, sleep=lambda seconds: None)
    finally:
        os.close(read)
    return [json.loads(line) for line in out.getvalue().splitlines()]


class _FlakyStore(SegmentStore):
    def __init__(self, uri: str, failures: int) -> None:
        super().__init__(uri)
        self.failures = failures

    def write(self, name: str, table: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        super().write(name, table)


def test_a_failed_write_keeps_the_records_for_the_next_try(tmp_path: Path) -> None:
    config = _log_config(tmp_path)
    writer = SegmentWriter(config, writer_id="p", store=_FlakyStore(config.uri, failures=1))
    assert _serve_frames(writer, [_seen()]) == [{"write_failed": 1}, {"written": 1}]
    assert [r.answer for r in _records(tmp_path)] == ["a0"]


def test_storage_down_at_a_stop_is_tried_three_times_then_reported_dropped(tmp_path: Path) -> None:
    config = _log_config(tmp_path)
    writer = SegmentWriter(config, writer_id="p", store=_FlakyStore(config.uri, failures=99))
    reports = _serve_frames(writer, [_seen(0), _seen(1)])
    assert reports == [{"write_failed": 2}] * 3 + [{"dropped": 2}]
    assert _records(tmp_path) == []


def test_segments_past_the_retention_are_removed_by_the_writer(tmp_path: Path) -> None:
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    for age_days, name in ((40, "old"), (5, "recent")):
        stamp = (now - timedelta(days=age_days)).strftime("%Y%m%dT%H%M%SZ")
        (tmp_path / f"escalations-{stamp}-{name}-000000.parquet").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a segment: left alone")

    writer = SegmentWriter(_log_config(tmp_path, retention_days=30), writer_id="p", epoch_seconds=now.timestamp)
    writer.add(_seen())
    writer.write_segment()
    names = sorted(path.name for path in tmp_path.iterdir())
    assert [name for name in names if "old" in name] == [] and any("recent" in name for name in names)
    assert "notes.txt" in names and len([name for name in names if name.endswith("-p-000000.parquet")]) == 1


def test_a_schema_newer_than_this_reader_is_refused_with_its_version() -> None:
    newer = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match=f"schema version {newer} is newer"):
        EscalationRecord.model_validate({**_record_fields(), "schema_version": newer})


def _record_fields() -> dict[str, Any]:
    return {
        "id": "x",
        "cascade": "c",
        "recorded_at": datetime.now(UTC),
        "endpoint": "chat",
        "request": "{}",
        "declined": [],
        "answered_by": {"tier": "t", "served_model": "m"},
        "answer": "",
    }


def test_kascade_log_stats_and_show_read_what_a_router_wrote(
    tmp_path: Path, start_upstream: Any, two_tier_config: Any
) -> None:
    from typer.testing import CliRunner

    from kascade.cli import app

    small = start_upstream(model="small-model", token_prob=0.45)
    large = start_upstream(model="large-model", tokens=["Paris"])
    config = two_tier_config(small.url, large.url, escalation_log=_log_config(tmp_path))
    with BackgroundServer(create_router_app(config)) as router:
        for question in ("capital of France?", "and of Italy?"):
            body = {"model": "demo", "messages": [{"role": "user", "content": question}]}
            assert httpx.post(f"{router.url}/v1/chat/completions", json=body).status_code == 200
    runner = CliRunner()
    stats = runner.invoke(app, ["log", "stats", str(tmp_path)], env={"COLUMNS": "200"})
    assert stats.exit_code == 0, stats.output
    assert "records" in stats.output and "2" in stats.output
    assert "small: geometricMean just below 0.5" in stats.output and "large 2" in stats.output
    show = runner.invoke(app, ["log", "show", str(tmp_path), "--limit", "1"], env={"COLUMNS": "200"})
    assert show.exit_code == 0 and "capital of France?" in show.output and "Paris" in show.output
    assert "and of Italy?" not in show.output
    empty = runner.invoke(app, ["log", "stats", str(tmp_path / "nothing")])
    assert empty.exit_code != 0 and "no escalation-log segments" in empty.output
