"""Goals as the user writes them: `--goal minAgreement=0.99`, or the manifest's `spec.calibration`."""

from __future__ import annotations

from collections.abc import Sequence

from kascade.api.loop import Calibration
from kascade.calibration.selection import Goal, GoalKind


class GoalError(Exception):
    pass


def parse_goal(text: str) -> Goal:
    name, _, value = text.partition("=")
    kinds = {kind.value.lower(): kind for kind in GoalKind}
    kind = kinds.get(name.strip().lower())
    if kind is None:
        raise GoalError(f"unknown goal {name!r} in {text!r}: use " + ", ".join(f"{k.value}=NUMBER" for k in GoalKind))
    try:
        target = float(value)
    except ValueError:
        raise GoalError(f"{text!r}: the goal needs a number in [0, 1], e.g. {kind.value}=0.95") from None
    if not 0.0 <= target <= 1.0:
        raise GoalError(f"{text!r}: the goal must lie in [0, 1]")
    return Goal(kind, target)


def goals_of(calibration: Calibration | None) -> list[Goal]:
    if calibration is None:
        return []
    found = [
        (GoalKind.min_agreement, calibration.min_agreement),
        (GoalKind.min_accuracy, calibration.min_accuracy),
        (GoalKind.max_escalation_rate, calibration.max_escalation_rate),
    ]
    return [Goal(kind, target) for kind, target in found if target is not None]


def resolve_goals(
    given: Sequence[str], calibration: Calibration | None, confidence: float | None
) -> tuple[list[Goal], float]:
    """`--goal` options win; else the manifest's goal. The confidence: the option, the manifest's, else 0.95."""
    goals = [parse_goal(text) for text in given] or goals_of(calibration)
    if confidence is None:
        confidence = calibration.confidence if calibration is not None else 0.95
    if not 0.0 < confidence < 1.0:
        raise GoalError(f"--confidence must lie strictly between 0 and 1 (got {confidence})")
    return goals, confidence
