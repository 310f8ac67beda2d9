"""`kascade distill --report-to NS/NAME`: the run's progress and result, written into its Distillation's status.

The operator runs a Distillation as a Job whose pod runs `kascade distill`;
it promotes the student from what this writes (`status.phase` Succeeded and
`status.gate.passed`). What is written, and its shape, is `status.py`; this
is the shell that sends it, with plain httpx and the pod's service account
(`kascade.runtime.cluster_status.subresource`).

The start and the result must land: each is tried `attempts` times (transport
errors, 5xx, 409 and 429 are retried; the rest are final), and a write that
still fails raises `ReportError`, so `kascade distill` exits non-zero rather
than lose the result: 3 when the API server may take it later (unreachable,
busy: the Job retries the pod, which resumes from the checkpoint), 2 when it
refused it (the Job's podFailurePolicy fails the Job at once).
Progress is best effort: one try at most every `interval_seconds`; a failure
is logged and training goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Self

import httpx
from pydantic import Field

from kascade.api.distillation import DISTILLATION_KIND, DISTILLATION_PLURAL
from kascade.api.times import format_time, utc_now
from kascade.distillation import status
from kascade.distillation.result import DistillResult
from kascade.runtime.cluster_status.subresource import StatusTarget

log = logging.getLogger("kascade.distill.report")

USER_AGENT = "kascade-distill"
_RETRIED = frozenset({409, 429})


class DistillationReportConfig(StatusTarget):
    """Which Distillation a run reports into, and how often."""

    plural: ClassVar[str] = DISTILLATION_PLURAL

    interval_seconds: float = Field(default=10.0, ge=0, description="Least time between two progress writes.")
    attempts: int = Field(default=4, ge=1, description="Tries of the start and the result writes.")
    backoff_seconds: float = Field(default=0.5, ge=0, description="Wait before the second try; doubled after each.")


class ReportError(Exception):
    """A write the run's result depends on could not be made; `transient`: the API server may take it later."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class DistillationReporter:
    """Writes one run's start, progress and result; `clock` and `sleep` are injected for tests."""

    def __init__(
        self,
        config: DistillationReportConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._clock, self._sleep = clock, sleep
        self._throttle = status.Throttle(config.interval_seconds)
        self._client = httpx.Client(verify=config.tls_verify(), timeout=10.0)
        self._steps = 0
        self._loss: float | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._client.close()

    @property
    def target(self) -> str:
        return f"{DISTILLATION_KIND} {self.config.namespace}/{self.config.name}"

    def start(self, steps: int) -> None:
        self._steps = steps
        self._write(status.started(steps, format_time(utc_now())), attempts=self.config.attempts)
        self._throttle.due(self._clock())  # the start is the first write the interval counts from

    def progress(self, step: int, loss: float) -> None:
        self._loss = loss
        if not self._throttle.due(self._clock()):
            return
        try:
            self._write(status.progressed(step, self._steps, loss), attempts=1)
        except ReportError as error:
            log.warning("%s; training goes on", error)

    def succeed(self, result: DistillResult, *, model: str) -> None:
        patch = status.succeeded(result, steps=self._steps, loss=self._loss, model=model, at=format_time(utc_now()))
        self._write(patch, attempts=self.config.attempts)

    def fail(self, message: str) -> None:
        self._write(status.failed(message, format_time(utc_now())), attempts=self.config.attempts)

    def _write(self, patch: dict[str, Any], *, attempts: int) -> None:
        """One merge patch, tried up to `attempts` times; ReportError says why the last try failed."""
        for attempt in range(attempts):
            if attempt:
                self._sleep(self.config.backoff_seconds * 2 ** (attempt - 1))
            problem, retried = self._try(patch)
            if problem is None:
                return
            if not retried:
                break
        raise ReportError(f"could not write the status of {self.target}: {problem}", transient=retried)

    def _try(self, patch: dict[str, Any]) -> tuple[str | None, bool]:
        """(what went wrong or None, whether another try may do better)."""
        try:
            response = self._client.patch(
                self.config.status_url(), json=patch, headers=self.config.merge_patch_headers(USER_AGENT)
            )
        except RuntimeError as error:  # no API server to talk to: trying again will not find one
            return str(error), False
        except (httpx.HTTPError, OSError) as error:
            return f"{type(error).__name__}: {error}", True
        if response.status_code < 400:
            return None, False
        return (
            f"HTTP {response.status_code}: {_reason(response)}",
            response.status_code in _RETRIED or response.status_code >= 500,
        )


def _reason(response: httpx.Response) -> str:
    """The API server's `Status.message`, else the start of the body."""
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else response.text[:300]
