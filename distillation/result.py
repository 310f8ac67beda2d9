"""What one distillation run measured and decided: one typed result, written once as `provenance.json`.

`run_distill` returns it; `kascade distill` prints it (`command.py`) and maps
it once to its Distillation's status (`status.succeeded`). The held-out
figures are the status's `Figures` plus what the gate needs to judge them
(the examples, the answers generated, the slices).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kascade.api.distill_settings import DistillSettings
from kascade.api.distillation import Figures, GateVerdict
from kascade.api.pre_route import PreRoute

PROVENANCE = "provenance.json"


class HeldOutFigures(Figures):
    """A student measured on the held-out examples (a classifier has no token agreement or loss)."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")  # a diverged loss stays NaN

    step: int | None = Field(default=None, description="The step it was measured after; none: before training.")
    examples: int = 0
    answers_generated: int | None = Field(default=None, description="Language models: held-out answers generated.")
    answers_unjudged: int | None = Field(
        default=None,
        description="Of those, the ones the matcher could not judge (a judge with no verdict or unreachable, an "
        "encoder that failed): left out of answer_agreement, and counted by the gate.",
    )
    slices: dict[str, tuple[int, int]] = Field(
        default_factory=dict, description="Per slice (a label, an answer length): (agreeing, examples)."
    )

    @property
    def answers_compared(self) -> int:
        """The answers `answer_agreement` is measured on."""
        return self.answers_generated if self.answers_generated is not None else self.examples

    @property
    def answers_judged(self) -> int:
        """Of the answers compared, those the matcher judged: what `answer_agreement` is the share of."""
        return self.answers_compared - (self.answers_unjudged or 0)


class RunData(BaseModel):
    """What the run trained on."""

    model_config = ConfigDict(extra="forbid")

    source: str
    examples: int
    train: int
    held_out: int
    task: Literal["classify", "generate"]
    levels: dict[str, int] = Field(description="How many training examples train at each level.")


class PreRouteRefit(BaseModel):
    """The student tier's pre-route score refitted from the log (`pre_route_refit`), and whether it is written."""

    model_config = ConfigDict(extra="forbid")

    tier: str
    pre_route: PreRoute | None = Field(
        default=None, description="The refitted score, certified; None: not written, the tier keeps its own."
    )
    fitted_on: int = Field(default=0, description="Prompts the score was fitted on.")
    certified_on: int = Field(default=0, description="Prompts, never fitted on, skipBelow was chosen and certified on.")
    kept: int = Field(default=0, description="Of those, the ones the tier kept (the bound's sample).")
    message: str = Field(description="What was refitted and certified, or why nothing is written.")


class DistillResult(BaseModel):
    """A run's provenance: its settings and data, the figures before and after and along the way, the verdict."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    kascade: Literal["distill"] = "distill"
    written_at: str
    settings: DistillSettings
    data: RunData
    steps: int
    before: HeldOutFigures
    after: HeldOutFigures
    gate: GateVerdict
    pre_route: PreRouteRefit | None = Field(
        default=None, description="The pre-route score refit, when the run made one."
    )
    history: list[HeldOutFigures]
    loss_start_end: list[float] = Field(
        description="Training loss, mean of the first and of the last tenth of the steps (one step's loss is noisy)."
    )
    seconds: float = Field(description="This run, loading and evaluation included.")
    train_seconds: float = Field(description="Training steps, every run of a resumed training added up.")
    peak_memory_mib: float
    machine: str

    def write(self, folder: Path) -> Path:
        path = folder / PROVENANCE
        path.write_text(self.model_dump_json(indent=2, exclude_none=True) + "\n")
        return path
