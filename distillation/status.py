"""What `kascade distill --report-to` writes into its Distillation's status. Pure.

Each write is a JSON merge patch of the status subresource, built from the
status types of `kascade.api.distillation`, so the wire shape is the CRD's.
Only the fields a moment sets are sent: a merge patch leaves the rest (the
operator's `job` and `promotion`) as they are.

- start: phase Running, startedAt, progress 0/N; a previous attempt's result is cleared;
- progress: progress {step, steps, loss} and progressText, at most every interval (`Throttle`);
- success: phase Succeeded, finishedAt, the final progress, examples, heldOut,
  the figures before and after, the gate's verdict, gainText, the model, the
  refitted pre-route score where it was certified (`preRoute`), and a message
  with the verdict and the refit's: the run's `DistillResult`, mapped here once;
- failure: phase Failed, finishedAt, the error as the message.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from kascade.api.distillation import DistillationPhase, DistillationStatus, Figures, GateVerdict, Progress
from kascade.api.resources import DNS_LABEL_PATTERN
from kascade.distillation.result import DistillResult, HeldOutFigures

# A run's result: what a new attempt's start clears, so that a retried run never shows the last one's ending.
RESULT_FIELDS = (
    "finished_at",
    "message",
    "examples",
    "held_out",
    "before",
    "after",
    "gate",
    "gain_text",
    "model",
    "pre_route",
)
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # a DNS subdomain, as metadata.name


def parse_report_target(value: str) -> tuple[str, str]:
    """`NAMESPACE/NAME` of a Distillation, as (namespace, name); ValueError says what is wrong."""
    namespace, slash, name = value.partition("/")
    namespace_fits = re.match(DNS_LABEL_PATTERN, namespace) and len(namespace) <= 63
    if not slash or not namespace_fits or not _OBJECT_NAME.match(name) or len(name) > 253:
        raise ValueError(
            f"{value!r} is not NAMESPACE/NAME of a Distillation (lowercase letters, digits and '-', e.g. llm/chat-1)"
        )
    return namespace, name


@dataclass
class Throttle:
    """At most one write per `interval` seconds: `due(now)` is True, and counts as a write, when the last is that old."""

    interval: float
    last: float | None = None

    def due(self, now: float) -> bool:
        if self.last is not None and now - self.last < self.interval:
            return False
        self.last = now
        return True


def status_patch(status: DistillationStatus, *, cleared: tuple[str, ...] = ()) -> dict[str, Any]:
    """The merge patch that writes the fields set on `status`, and removes the `cleared` ones."""
    body = status.merge_patch_body()
    for field in cleared:
        body[DistillationStatus.model_fields[field].alias or field] = None
    return {"status": body}


def _finite(value: Any) -> float | None:
    """A number the API server can store: JSON has no NaN or infinity (a diverged loss)."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _progress(step: int, steps: int, loss: float | None = None) -> dict[str, Any]:
    finite = _finite(loss)
    progress = Progress(step=step, steps=steps) if finite is None else Progress(step=step, steps=steps, loss=finite)
    return {"progress": progress, "progress_text": f"{step}/{steps}"}


def started(steps: int, at: str) -> dict[str, Any]:
    status = DistillationStatus(phase=DistillationPhase.running, started_at=at, **_progress(0, steps))
    return status_patch(status, cleared=RESULT_FIELDS)


def progressed(step: int, steps: int, loss: float | None) -> dict[str, Any]:
    return status_patch(DistillationStatus(**_progress(step, steps, loss)))


def figures_of(measured: HeldOutFigures) -> Figures:
    """The figures the status shows, of those the run measured (a classifier has no token agreement)."""
    return Figures(
        **{name: value for name in Figures.model_fields if (value := _finite(getattr(measured, name))) is not None}
    )


def verdict_message(gate: GateVerdict) -> str:
    """The gate's verdict in words, with what became of the refitted pre-route score where there is one."""
    said = "gate passed" if gate.passed else "gate failed: " + "; ".join(gate.reasons or ["no reason given"])
    return f"{said}; {gate.pre_route}" if gate.pre_route else said


def succeeded(result: DistillResult, *, steps: int, loss: float | None, model: str, at: str) -> dict[str, Any]:
    """The result as `run_distill` returns it; `loss`: the last step's; `model`: the student as a tier's model.uri."""
    gain = _finite(result.gate.gain)
    status = DistillationStatus(
        phase=DistillationPhase.succeeded,
        finished_at=at,
        **_progress(result.steps, steps, loss),
        examples=result.data.train,
        held_out=result.data.held_out,
        before=figures_of(result.before),
        after=figures_of(result.after),
        gate=result.gate.model_copy(update={"gain": gain}),
        gain_text="" if gain is None else f"{gain:+.4f}",
        model=model,
        pre_route=result.pre_route.pre_route if result.pre_route is not None else None,
        message=verdict_message(result.gate),
    )
    return status_patch(status)


def failed(message: str, at: str) -> dict[str, Any]:
    return status_patch(DistillationStatus.failed(message, at))
