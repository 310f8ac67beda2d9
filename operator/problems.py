"""What is wrong with a cascade, or what it waits for: one reason enum, one `Problem` type. Pure.

A blocking problem (a fault the user must fix) makes the cascade `Degraded`
(its reason is the condition's reason) and stops the apply; the message says
what to do. A wait (`Problem.blocking` False: no node offers a tier's GPU type
yet) is not a fault: the children are applied, and the tier's pods stay
Pending, which is what a node pool that scales from zero needs to add a node;
the wait only says, in `TiersReady` and `Ready`, why the tier does not serve.
A warning (a ReadWriteOnce claim that pods on several nodes share) degrades
the cascade and stops nothing: on a single-node cluster it works as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kascade.operator.plan import Plan


class ProblemReason(StrEnum):
    """The reasons a cascade is Degraded because of a problem (the condition's `reason`)."""

    invalid_spec = "InvalidSpec"  # the spec does not parse, or makes no sense (conditions.check_semantics)
    missing_secret = "MissingSecret"  # a referenced Secret or key does not exist
    name_conflict = "NameConflict"  # a child's name is held by an object the cascade does not own
    apply_failed = "ApplyFailed"  # the API server refused a write (retried)
    waiting_for_gpu_nodes = "WaitingForGpuNodes"  # a wait, not a fault: no node offers the tier's gpuType yet
    claim_not_shared = "ClaimNotShared"  # a warning: pods that may run on several nodes share a ReadWriteOnce claim


# Reasons that explain why a tier waits; they neither stop the apply nor degrade the cascade.
WAITS = frozenset({ProblemReason.waiting_for_gpu_nodes})
# Reasons that degrade the cascade but do not stop the apply: it works on some clusters (one node).
WARNINGS = frozenset({ProblemReason.claim_not_shared})


@dataclass(frozen=True)
class Problem:
    """Something wrong that the user must fix (it makes the cascade `Degraded`), or a tier's wait.

    `tier`: the tier a wait is about (its `TiersReady` phrase carries the message).
    """

    reason: ProblemReason
    message: str
    tier: str | None = None

    @property
    def blocking(self) -> bool:
        """Whether it stops the apply: every reason but a wait or a warning."""
        return self.reason not in WAITS and self.reason not in WARNINGS

    @property
    def degrades(self) -> bool:
        """Whether it makes the cascade Degraded: every reason but a wait."""
        return self.reason not in WAITS


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
