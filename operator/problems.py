"""What is wrong with a cascade that the user must fix: one reason enum, one `Problem` type. Pure.

A problem makes the cascade `Degraded` (its reason is the condition's reason)
and stops the apply; the message says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kascade.operator.plan import Plan


class ProblemReason(StrEnum):
    """The reasons a cascade is Degraded because of a problem (the condition's `reason`)."""

    invalid_spec = "InvalidSpec"  # the spec does not parse, or makes no sense (conditions.check_semantics)
    missing_secret = "MissingSecret"  # a referenced Secret or key does not exist
    no_matching_nodes = "NoMatchingNodes"  # a gpuType no node offers
    name_conflict = "NameConflict"  # a child's name is held by an object the cascade does not own
    apply_failed = "ApplyFailed"  # the API server refused a write (retried)


@dataclass(frozen=True)
class Problem:
    """Something wrong that the user must fix; it makes the cascade `Degraded`."""

    reason: ProblemReason
    message: str


def conflict_problems(plan: Plan, namespace: str) -> list[Problem]:
    """One NameConflict per child name that someone else's object holds."""
    return [
        Problem(
            ProblemReason.name_conflict,
            f'{kind} "{name}" already exists in namespace "{namespace}" and is not managed by this cascade; '
            "delete or rename it, or rename the cascade",
        )
        for kind, name in plan.conflicts
    ]
