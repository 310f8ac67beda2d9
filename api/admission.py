"""Admission control: how many calls a router sends each tier at once, and how long a request may wait for one.

Each router replica bounds the calls in flight to each tier and keeps a
bounded queue in front of it, with a deadline. A request its first tier cannot
admit gets 429 with a `Retry-After` before any tier is called; a request whose
escalation finds the next tier full gets `onEscalationFull`. The router's
gates are `kascade.runtime.admission`; its counts are in `/stats`, the status
and `/metrics` (`kascade_tier_in_flight` and `kascade_tier_queued` are what an
autoscaler reads).

Part of the ModelCascade API: `spec.router.admission` and `tiers[].admission`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import Field

from kascade.api.base import SpecModel

# A transformers engine runs one request at a time: one call running and one ready keeps its model busy, and more
# would only queue inside the server, where the router can neither see nor bound the wait.
TRANSFORMERS_IN_FLIGHT_PER_REPLICA = 2
DEFAULT_MAX_IN_FLIGHT = 64
DEFAULT_MAX_QUEUE = 128
DEFAULT_QUEUE_TIMEOUT_SECONDS = 10.0


class AdmissionOutcome(StrEnum):
    """What became of a request at one tier's gate: the label of its counts (ledger, status, metrics)."""

    admitted = "admitted"  # given a slot, at once or after waiting
    rejected = "rejected"  # 429: the first tier it asked had no slot within the deadline
    rejected_at_escalation = "rejected_at_escalation"  # 503: escalated, and the tier had no slot
    kept_under_load = "kept_under_load"  # escalated, and the tier before answered instead (keepSmall)


class OnEscalationFull(StrEnum):
    """What a request escalated to a tier with no free slot gets."""

    wait = "wait"  # queue for the tier within queueTimeoutSeconds, then 503 with Retry-After
    keep_small = "keepSmall"  # the declined answer of the tier before, marked x-kascade-kept-under-load
    reject = "reject"  # 503 with Retry-After at once


class Admission(SpecModel):
    """The router's bounds on each tier, per router replica: calls in flight, a queue, and its deadline."""

    max_in_flight_per_tier: int = Field(
        default=DEFAULT_MAX_IN_FLIGHT,
        ge=1,
        le=100_000,
        description=(
            "Calls one router replica sends a tier at once; beyond, requests queue. 64 stays under vLLM's "
            "default batch (max_num_seqs 256) even behind four router replicas, so a single vLLM replica is not "
            "pushed into queueing inside itself, where no one sees or bounds the wait. A tier of engine "
            f"transformers (one request at a time) defaults to {TRANSFORMERS_IN_FLIGHT_PER_REPLICA} per replica "
            "instead. Raise it with the tier's replicas (tiers[].admission.maxInFlight)."
        ),
    )
    max_queue_per_tier: int = Field(
        default=DEFAULT_MAX_QUEUE,
        ge=0,
        le=100_000,
        description=(
            "Requests one router replica holds waiting for a tier's slot; beyond, they are refused at once "
            "(429 at the first tier, onEscalationFull after). 128: two rounds of the default 64 in flight, so a "
            "queued request waits about two answers' time. 0: no queue."
        ),
    )
    queue_timeout_seconds: float = Field(
        default=DEFAULT_QUEUE_TIMEOUT_SECONDS,
        gt=0,
        le=3600,
        description=(
            "How long a request waits in a tier's queue before it is refused with a Retry-After (429 at the "
            "first tier, 503 on escalation). 10 s: well inside the router's timeoutSeconds and any client's own, "
            "so an overloaded cascade answers with a clear error the client's retry honours, never a hang."
        ),
    )
    on_escalation_full: OnEscalationFull = Field(
        default=OnEscalationFull.wait,
        description=(
            "When an escalated request finds the next tier with no free slot: wait (in its queue, within "
            "queueTimeoutSeconds, then 503), keepSmall (answer with the declined answer in hand, marked "
            "x-kascade-kept-under-load: true) or reject (503 at once). Every 503 carries a Retry-After."
        ),
    )


class TierAdmission(SpecModel):
    """One tier's own bounds, in place of the router's defaults."""

    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description=(
            "Calls one router replica sends this tier at once. Default: router.admission.maxInFlightPerTier; "
            f"for engine transformers {TRANSFORMERS_IN_FLIGHT_PER_REPLICA} x replicas. Size it from the tier's "
            "measured throughput: requests in flight per replica at the throughput knee x replicas / router replicas."
        ),
    )
    max_queue: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="Requests one router replica holds waiting for this tier. Default: maxQueuePerTier.",
    )


@dataclass(frozen=True)
class TierLimits:
    """The bounds in force on one tier in one router replica."""

    max_in_flight: int
    max_queue: int


def tier_limits(router: Admission, tier: TierAdmission | None, *, one_at_a_time: bool, replicas: int) -> TierLimits:
    """The tier's own bounds, else the router's; `one_at_a_time` (engine transformers): 2 per replica by default."""
    default_in_flight = (
        TRANSFORMERS_IN_FLIGHT_PER_REPLICA * max(replicas, 1) if one_at_a_time else router.max_in_flight_per_tier
    )
    in_flight = tier.max_in_flight if tier is not None and tier.max_in_flight is not None else default_in_flight
    queue = tier.max_queue if tier is not None and tier.max_queue is not None else router.max_queue_per_tier
    return TierLimits(max_in_flight=in_flight, max_queue=queue)
