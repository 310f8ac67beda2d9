"""The escalation log, router side: hand each escalation to the writer process, never on the response path.

Flow: `offer` (on the request's task, never awaits) appends what the router saw
to a batch; every `_BATCH_SECONDS` the batch goes, pickled as one frame, to the
writer process's stdin (`escalation_writer.py`), which builds, redacts and
writes the records. The request pays for an append, nothing else. At most `queue_size` records are in
flight (handed over, not yet reported written); beyond that, or while no writer
runs, a record is dropped and counted (ledger and metric), and the answer is
not delayed. The writer reports each written segment on its stdout. If the
writer dies, what it had not written is counted as dropped and a new one is
started. `close` (the router's lifespan end, i.e. SIGTERM) closes its stdin and
waits for it to write everything it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
from typing import TYPE_CHECKING, Any

from kascade.runtime.config import EscalationLogConfig
from kascade.runtime.escalation.records import EscalationSeen
from kascade.runtime.escalation.segments import SegmentStore
from kascade.runtime.escalation.writer import encode_frame

if TYPE_CHECKING:
    from kascade.runtime.ledger import Ledger
    from kascade.runtime.metrics import RouterMetrics

logger = logging.getLogger(__name__)
_BATCH_SECONDS = 0.05
_RESTART_SECONDS = 1.0
_CLOSE_TIMEOUT_SECONDS = 60.0  # the writer's own tries at shutdown fit well inside this


class EscalationLog:
    """One router's link to its writer process; `start` in the lifespan, `offer` per escalation, `close` on the way out."""

    def __init__(
        self,
        config: EscalationLogConfig,
        *,
        process_id: str,
        ledger: Ledger | None = None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        SegmentStore(config.uri)  # a missing extra or an unknown scheme fails at start, not in the writer
        self.config = config
        self._writer_id = re.sub(r"[^A-Za-z0-9_.-]", "-", process_id)[:80]
        self._ledger = ledger
        self._metrics = metrics
        self._process: asyncio.subprocess.Process | None = None
        self._reports: asyncio.Task[None] | None = None
        self._starts = 0
        self._closing = False
        self._batch: list[EscalationSeen] = []
        self._sending: asyncio.TimerHandle | None = None
        self.in_flight = 0  # handed to the writer, not yet reported written or dropped
        self.written = 0
        self.dropped = 0

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kascade.runtime.escalation.writer",
            self.config.model_dump_json(),
            f"{self._writer_id}-{self._starts}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._starts += 1
        self._reports = asyncio.create_task(self._read_reports(self._process), name="escalation-log-reports")

    def offer(self, seen: EscalationSeen) -> bool:
        """Hand what one escalation showed to the writer; False (dropped, counted) when it cannot take it. Never blocks."""
        kept = self._writer_open() and self.in_flight < self.config.queue_size
        if kept:
            self._batch.append(seen)
            self.in_flight += 1
            if self._sending is None:
                self._sending = asyncio.get_running_loop().call_later(_BATCH_SECONDS, self._send)
        else:
            self.dropped += 1
        if self._ledger is not None:
            self._ledger.note_escalation_logged(kept=kept)
        if self._metrics is not None:
            self._metrics.observe_escalation_log("queued" if kept else "dropped")
        return kept

    def _writer_open(self) -> bool:
        stdin = self._process.stdin if self._process is not None else None
        return stdin is not None and not stdin.is_closing()

    def _send(self) -> None:
        """The batch to the writer as one frame; the transport writes it when the pipe takes it."""
        self._sending = None
        batch, self._batch = self._batch, []
        if not batch:
            return
        if not self._writer_open():  # the writer ended since these were offered
            self._note("dropped", len(batch))
            return
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(encode_frame(batch))

    async def close(self) -> None:
        """Close the writer's stdin and wait until it has written (or given up on) everything it holds."""
        self._closing = True
        if self._sending is not None:
            self._sending.cancel()
        self._send()
        process, reports = self._process, self._reports
        if process is None or reports is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(reports), _CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            logger.error("escalation log: the writer did not finish in %.0f s; stopping it", _CLOSE_TIMEOUT_SECONDS)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await reports

    async def _read_reports(self, process: asyncio.subprocess.Process) -> None:
        """Count what the writer reports until it ends; a writer that ended on its own is replaced."""
        assert process.stdout is not None
        async for line in process.stdout:
            try:
                ((outcome, count),) = json.loads(line).items()
            except (ValueError, AttributeError):  # not a report (something else wrote to stdout): not counted
                logger.warning("escalation log: the writer said %r", line[:200])
                continue
            self._note(outcome, int(count))
        code = await process.wait()
        if self.in_flight:
            logger.error("escalation log: the writer ended (exit %s) with %d records unwritten", code, self.in_flight)
            self._note("dropped", self.in_flight)
        if not self._closing:
            await asyncio.sleep(_RESTART_SECONDS)
            if not self._closing:
                await self.start()

    def _note(self, outcome: str, count: int) -> None:
        if outcome in ("written", "dropped"):
            self.in_flight = max(0, self.in_flight - count)
        if outcome == "written":
            self.written += count
        elif outcome == "dropped":
            self.dropped += count
            if self._ledger is not None:
                self._ledger.note_escalation_log_lost(count)
        if self._metrics is not None:
            self._metrics.observe_escalation_log(outcome, count)

    @property
    def writer_pid(self) -> int | None:
        """The writer process's id while one runs."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def stats(self) -> dict[str, Any]:
        return {"written": self.written, "dropped": self.dropped, "queued": self.in_flight}
