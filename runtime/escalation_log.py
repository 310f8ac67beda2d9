"""The escalation log's writer: a bounded queue off the response path, Parquet segments, redaction, retention.

Why Parquet: the records are nested (per-position lists of top-k ids and
logprobs) and read column by column (a data person wants the prompts, the
trainer wants the token columns); Parquet keeps the nesting typed, compresses
each column (zstd), and every segment is a whole file that pandas, DuckDB,
Spark or `pyarrow` open as they are. Compressed JSONL would need the whole file
decompressed and parsed to read one column, and has no types.

Flow: `offer` (on the request's task, never awaits) puts what the router saw
on a bounded queue; when the queue is full the record is dropped and counted
(ledger and metric), and the answer is not delayed. A background task writes a
segment when `segment_records` are waiting or `flush_seconds` have passed since
the first of them; the records are built (redaction included) and written in a
worker thread, off the event loop that serves requests. A failed
write keeps its records and is retried; `close` (the router's lifespan end,
i.e. SIGTERM) writes whatever is queued. Each segment is written under a
temporary name and renamed (a folder) or put whole (S3), so a reader never sees
half a segment. After each write, segments older than `retention_days` go.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from kascade.runtime.config import EscalationLogConfig
from kascade.runtime.escalation_records import EscalationSeen, build_record
from kascade.runtime.log_segments import SegmentStore, records_table
from kascade.runtime.redaction import Redactor

if TYPE_CHECKING:
    from kascade.runtime.ledger import Ledger
    from kascade.runtime.metrics import RouterMetrics

logger = logging.getLogger(__name__)
_RETRY_SECONDS = 5.0
_SHUTDOWN_ATTEMPTS = 3  # a stop waits this many tries for storage, then counts what is left as dropped
_SHUTDOWN_RETRY_SECONDS = 0.5


class EscalationLog:
    """One router's writer; `start` in the lifespan, `offer` per escalation, `close` on the way out."""

    def __init__(
        self,
        config: EscalationLogConfig,
        *,
        process_id: str,
        ledger: Ledger | None = None,
        metrics: RouterMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = SegmentStore(config.uri)
        self.redactor = Redactor.with_built_ins(config.redact)
        self._writer_id = re.sub(r"[^A-Za-z0-9_.-]", "-", process_id)[:80]
        self._ledger = ledger
        self._metrics = metrics
        self._clock = clock
        self._queue: asyncio.Queue[EscalationSeen] = asyncio.Queue(maxsize=config.queue_size)
        self._pending: list[EscalationSeen] = []  # built into records in the writer's thread, off the event loop
        self._segments = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.written = 0
        self.dropped = 0

    async def start(self) -> None:
        await asyncio.to_thread(self._remove_expired)
        self._task = asyncio.create_task(self._run(), name="escalation-log")

    def offer(self, seen: EscalationSeen) -> bool:
        """Queue what one escalation showed; False (dropped, counted) when the queue is full. Never blocks."""
        kept = len(self._pending) < self.config.queue_size
        if kept:
            try:
                self._queue.put_nowait(seen)
            except asyncio.QueueFull:
                kept = False
        if not kept:
            self.dropped += 1
        if self._ledger is not None:
            self._ledger.note_escalation_logged(kept=kept)
        if self._metrics is not None:
            self._metrics.observe_escalation_log("queued" if kept else "dropped")
        return kept

    async def close(self) -> None:
        """Stop the background task (after the write it may be in) and write everything still queued."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._take_queued(limit=None)
        failures = 0
        while self._pending:
            if await self._write_pending():
                continue
            failures += 1
            if failures == _SHUTDOWN_ATTEMPTS:
                logger.error("escalation log: %d records could not be written at shutdown", len(self._pending))
                self._count_lost(len(self._pending))
                self._pending.clear()
            else:
                await asyncio.sleep(_SHUTDOWN_RETRY_SECONDS)

    async def _run(self) -> None:
        """Write segments until `close`; never cancelled mid-write (a cancelled write would be written twice)."""
        while not self._stopping.is_set():
            await self._wait_for_a_segment()
            if self._pending and not await self._write_pending():
                await self._next(_RETRY_SECONDS, take=False)

    async def _next(self, timeout: float | None, *, take: bool = True) -> EscalationSeen | None:
        """The next queued escalation within `timeout` (None: no limit); None on timeout or when stopping."""
        waits = {asyncio.ensure_future(self._stopping.wait())}
        getter = asyncio.ensure_future(self._queue.get()) if take else None
        if getter is not None:
            waits.add(getter)
        done, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for future in pending:
            future.cancel()  # a cancelled Queue.get takes nothing off the queue
        return getter.result() if getter is not None and getter in done else None

    async def _wait_for_a_segment(self) -> None:
        """Until `segment_records` are pending, `flush_seconds` passed since the first one came, or stopping."""
        if not self._pending:
            seen = await self._next(None)
            if seen is None:
                return
            self._pending.append(seen)
        deadline = asyncio.get_running_loop().time() + self.config.flush_seconds
        while len(self._pending) < self.config.segment_records:
            self._take_queued(limit=self.config.segment_records)
            remaining = deadline - asyncio.get_running_loop().time()
            if len(self._pending) >= self.config.segment_records or remaining <= 0:
                return
            seen = await self._next(remaining)
            if seen is None:
                return
            self._pending.append(seen)

    def _take_queued(self, limit: int | None) -> None:
        while not self._queue.empty() and (limit is None or len(self._pending) < limit):
            self._pending.append(self._queue.get_nowait())

    async def _write_pending(self) -> bool:
        """Write up to one segment of the pending records; on failure keep them for the next try."""
        batch = self._pending[: self.config.segment_records]
        name = self._segment_name()
        try:
            await asyncio.to_thread(self._write_and_expire, name, batch)
        except Exception:  # noqa: BLE001 - any storage failure (disk full, S3 down): keep the records, retry
            logger.exception("escalation log: writing %s failed; %d records kept for a retry", name, len(batch))
            if self._metrics is not None:
                self._metrics.observe_escalation_log("write_failed", len(batch))
            return False
        del self._pending[: len(batch)]
        self._segments += 1
        self.written += len(batch)
        if self._metrics is not None:
            self._metrics.observe_escalation_log("written", len(batch))
        return True

    def _write_and_expire(self, name: str, batch: list[EscalationSeen]) -> None:
        """In a worker thread: redact and build the records, write them as one segment, expire old segments."""
        self.store.write(name, records_table([build_record(seen, self.redactor) for seen in batch]))
        self._remove_expired()

    def _remove_expired(self) -> None:
        cutoff = datetime.fromtimestamp(self._clock(), UTC) - timedelta(days=self.config.retention_days)
        removed = self.store.remove_older_than(cutoff)
        if removed:
            logger.info("escalation log: %d segments past %d days removed", removed, self.config.retention_days)

    def _segment_name(self) -> str:
        stamp = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y%m%dT%H%M%SZ")
        return f"escalations-{stamp}-{self._writer_id}-{self._segments:06d}.parquet"

    def _count_lost(self, count: int) -> None:
        self.dropped += count
        if self._metrics is not None:
            self._metrics.observe_escalation_log("dropped", count)

    def stats(self) -> dict[str, Any]:
        return {"written": self.written, "dropped": self.dropped, "queued": self._queue.qsize() + len(self._pending)}
