"""Whether a finished run's student replaces the one its tier serves: the promotion decision. Pure.

A run is promoted only when it succeeded, its gate passed, and the tier still
serves the student the run started from (the gate compared against that one;
a model changed meanwhile, by a user or a rollback, was never judged). Then
the tier's `model.uri` is pointed at the run's model (`spec_patch`), and the
model it replaces is kept as the rollback target (`Promotion.previousModel`,
and `status.distillation.rollbackTarget` of the cascade). A decision is made
once per run and written into its status; a failed gate never promotes.

Rolling back is one field: set the tier's `model.uri` back to the rollback
target (docs/distillation.md shows the kubectl command).
"""

from __future__ import annotations

from typing import Any

from kascade.api.distillation import Distillation, DistillationPhase, Promotion, PromotionReason
from kascade.api.modelcascade import ModelCascade

def tier_index(cascade: ModelCascade, tier: str) -> int | None:
    return next((i for i, t in enumerate(cascade.spec.tiers) if t.name == tier), None)


def serving_model(cascade: ModelCascade, tier: str) -> str | None:
    """What a student tier serves now; None when it is gone or became the last tier."""
    index = tier_index(cascade, tier)
    return cascade.spec.tiers[index].model.uri if index is not None and index < len(cascade.spec.tiers) - 1 else None


def decide_promotion(run: Distillation, cascade: ModelCascade, *, now: str) -> Promotion | None:
    """The decision about a finished run not yet decided; None while it runs or once decided."""
    status = run.status
    if status is None or not status.phase.finished or status.promotion is not None:
        return None
    if status.phase is DistillationPhase.failed:
        return Promotion(promoted=False, reason=PromotionReason.run_failed, message=status.message or "the run failed",
                         at=now)  # fmt: skip
    gate = status.gate
    if gate is None or not gate.passed:
        reasons = "; ".join(gate.reasons) if gate is not None and gate.reasons else "no gate verdict was reported"
        return Promotion(promoted=False, reason=PromotionReason.gate_failed, message=f"the gate failed: {reasons}",
                         at=now)  # fmt: skip
    serving = serving_model(cascade, run.spec.tier)
    if status.model and serving == status.model:
        # Promoted already (the spec was patched, then the operator stopped before saying so).
        return _promoted(run, status.model, gate.gain, now)
    if serving != run.spec.student or not status.model:
        now_serving = f"serves {serving}" if serving is not None else "is no longer a student tier of the cascade"
        return Promotion(promoted=False, reason=PromotionReason.student_changed, at=now,
                         message=f"tier {run.spec.tier} {now_serving}, not {run.spec.student} that the run started from "
                                 "and was judged against")  # fmt: skip
    return _promoted(run, status.model, gate.gain, now)


def _promoted(run: Distillation, model: str, gain: float | None, now: str) -> Promotion:
    shown = f" (gain {gain:+.4f})" if gain is not None else ""
    return Promotion(promoted=True, reason=PromotionReason.promoted, previous_model=run.spec.student, at=now,
                     message=f"tier {run.spec.tier}: {run.spec.student} -> {model}{shown}")  # fmt: skip


def refused(run: Distillation, message: str, now: str) -> Promotion:
    """The API server refused the cascade with the new model (validation, not a changed tier)."""
    return Promotion(promoted=False, reason=PromotionReason.spec_refused, at=now,
                     message=f"the cascade with tier {run.spec.tier} on the new model was refused: {message}")  # fmt: skip


def spec_patch(run: Distillation, cascade: ModelCascade) -> list[dict[str, Any]] | None:
    """The JSON patch that points the tier at the run's model, guarded by a test of what it serves; None if it does."""
    index = tier_index(cascade, run.spec.tier)
    assert index is not None and run.status is not None and run.status.model
    path = f"/spec/tiers/{index}/model/uri"
    if cascade.spec.tiers[index].model.uri == run.status.model:
        return None
    return [{"op": "test", "path": path, "value": run.spec.student},
            {"op": "replace", "path": path, "value": run.status.model}]  # fmt: skip
