"""The escalation log's writer: a process of its own that turns what routers saw into Parquet segments.

Why a process: building a record (redaction, validation, the Arrow
conversion) is Python work, about 0.15 ms a record. In the router's process it
competed with the event loop for the GIL, in bursts when a segment was built,
and every answer waited behind it (docs/distillation.md measures it). Here the
router only pickles what it saw onto this process's stdin; everything else
happens here.

Protocol: stdin carries frames (4-byte big-endian length, then a pickled
list of `EscalationSeen`); stdout carries one JSON line per outcome (`{"written": n}`,
`{"write_failed": n}`, `{"dropped": n}`), which the router turns into its
counters. End of stdin means stop: whatever is pending is written (three tries),
and what still fails is reported dropped. The process ignores SIGINT and
SIGTERM, so a Ctrl-C or a pod's stop reaches the router, which closes stdin
after its last request; nothing queued is lost to the signal.

Why Parquet: the records are nested (per-position lists of top-k ids and
logprobs) and read column by column (a data person wants the prompts, the
trainer wants the token columns); Parquet keeps the nesting typed, compresses
each column (zstd), and every segment is a whole file that pandas, DuckDB,
Spark or `pyarrow` open as they are. Compressed JSONL would need the whole file
decompressed and parsed to read one column, and has no types.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import select
import signal
import struct
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import IO

from kascade.runtime.config import EscalationLogConfig
from kascade.runtime.escalation.records import EscalationSeen, build_record
from kascade.runtime.escalation.redaction import Redactor
from kascade.runtime.escalation.segments import SegmentStore, records_table

logger = logging.getLogger(__name__)
FRAME_HEADER = struct.Struct(">I")
RETRY_SECONDS = 5.0
SHUTDOWN_ATTEMPTS = 3  # a stop waits this many tries for storage, then reports what is left as dropped
SHUTDOWN_RETRY_SECONDS = 0.5


def encode_frame(batch: list[EscalationSeen]) -> bytes:
    payload = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(payload)) + payload


class FrameReader:
    """Frames out of the bytes a pipe gives, in whatever pieces it gives them."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[EscalationSeen]:
        """Every escalation in the frames completed by `data`."""
        self._buffer += data
        seen: list[EscalationSeen] = []
        while len(self._buffer) >= FRAME_HEADER.size:
            (size,) = FRAME_HEADER.unpack_from(self._buffer)
            end = FRAME_HEADER.size + size
            if len(self._buffer) < end:
                break
            seen.extend(pickle.loads(bytes(self._buffer[FRAME_HEADER.size : end])))  # our own router
            del self._buffer[:end]
        return seen


class SegmentWriter:
    """Pending escalations into segments: rotation by count or age, retention; storage errors raise to the caller."""

    def __init__(
        self,
        config: EscalationLogConfig,
        *,
        writer_id: str,
        store: SegmentStore | None = None,
        epoch_seconds: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store or SegmentStore(config.uri)
        self.redactor = Redactor.with_built_ins(config.redact)
        self.writer_id = writer_id
        self.epoch_seconds = epoch_seconds  # wall time: segment names, flush deadlines, retention
        self.pending: list[EscalationSeen] = []
        self._oldest_pending_at: float | None = None
        self.segments = 0

    def add(self, seen: EscalationSeen) -> None:
        if not self.pending:
            self._oldest_pending_at = self.epoch_seconds()
        self.pending.append(seen)

    def seconds_until_due(self) -> float | None:
        """How long until a segment is due (0: now); None when nothing is pending."""
        if self._oldest_pending_at is None:
            return None
        if len(self.pending) >= self.config.segment_records:
            return 0.0
        return max(0.0, self._oldest_pending_at + self.config.flush_seconds - self.epoch_seconds())

    def write_segment(self) -> int:
        """Build and write one segment of the oldest pending records, then expire old segments; how many were written."""
        batch = self.pending[: self.config.segment_records]
        stamp = datetime.fromtimestamp(self.epoch_seconds(), UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"escalations-{stamp}-{self.writer_id}-{self.segments:06d}.parquet"
        self.store.write(name, records_table([build_record(seen, self.redactor) for seen in batch]))
        del self.pending[: len(batch)]
        self.segments += 1
        self._oldest_pending_at = self.epoch_seconds() if self.pending else None
        self.remove_expired()
        return len(batch)

    def remove_expired(self) -> None:
        cutoff = datetime.fromtimestamp(self.epoch_seconds(), UTC) - timedelta(days=self.config.retention_days)
        removed = self.store.remove_older_than(cutoff)
        if removed:
            logger.info("escalation log: %d segments past %d days removed", removed, self.config.retention_days)


def _report(out: IO[str], outcome: str, count: int) -> None:
    out.write(json.dumps({outcome: count}) + "\n")
    out.flush()


def _try_write(writer: SegmentWriter, out: IO[str]) -> bool:
    try:
        written = writer.write_segment()
    except Exception:  # any storage failure (disk full, S3 down): keep the records, retry
        logger.exception("escalation log: a write failed; %d records kept for a retry", len(writer.pending))
        _report(out, "write_failed", min(len(writer.pending), writer.config.segment_records))
        return False
    _report(out, "written", written)
    return True


def serve(writer: SegmentWriter, source: int, out: IO[str], *, sleep: Callable[[float], None] = time.sleep) -> None:
    """Read frames from the `source` descriptor and write segments until it ends; then write what is pending."""
    frames = FrameReader()
    retry_at: float | None = None
    while True:
        due_in = writer.seconds_until_due()
        if retry_at is not None:
            due_in = max(0.0, retry_at - writer.epoch_seconds())
        readable, _, _ = select.select([source], [], [], due_in)
        if readable:
            data = os.read(source, 1 << 20)
            if not data:
                break
            for seen in frames.feed(data):
                writer.add(seen)
        waiting = writer.seconds_until_due()
        if waiting == 0.0 and (retry_at is None or writer.epoch_seconds() >= retry_at):
            retry_at = None if _try_write(writer, out) else writer.epoch_seconds() + RETRY_SECONDS
    _flush_at_the_end(writer, out, sleep)


def _flush_at_the_end(writer: SegmentWriter, out: IO[str], sleep: Callable[[float], None]) -> None:
    failures = 0
    while writer.pending:
        if _try_write(writer, out):
            continue
        failures += 1
        if failures == SHUTDOWN_ATTEMPTS:
            logger.error("escalation log: %d records could not be written at shutdown", len(writer.pending))
            _report(out, "dropped", len(writer.pending))
            writer.pending.clear()
        else:
            sleep(SHUTDOWN_RETRY_SECONDS)


def main(argv: list[str]) -> None:
    """`python -m kascade.runtime.escalation.writer CONFIG_JSON WRITER_ID`, started by the router."""
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)  # the router ends us by closing stdin, after its last request
    logging.basicConfig(level=logging.INFO, format="%(asctime)s escalation-writer %(levelname)s %(message)s")
    config = EscalationLogConfig.model_validate_json(argv[0])
    writer = SegmentWriter(config, writer_id=argv[1])
    writer.remove_expired()
    serve(writer, sys.stdin.fileno(), sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
