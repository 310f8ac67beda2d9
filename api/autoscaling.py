"""A tier that scales with its traffic: how many replicas, and what load one replica is sized for.

The signal is the routers' own: requests in flight and queued for the tier,
summed over every router replica (`kascade_tier_in_flight` and
`kascade_tier_queued` on `/metrics`), so the last tier is sized from the
escalation load the smaller tiers pass on, not from its own CPU. The operator
renders a KEDA `ScaledObject` when KEDA is installed, else an `autoscaling/v2`
HorizontalPodAutoscaler (`kascade.operator.build_autoscaling`), and leaves the
Deployment's `replicas` to it.

`minReplicas: 0` (scale to zero) on a tier before the last: while the tier has
no ready replica its requests skip it and the next tier answers. On the last
tier, which answers whatever reaches it, scale to zero needs
`coldStartWaitSeconds`: how long a request waits for a replica to come back.

Part of the ModelCascade API; the CEL rules below (`AUTOSCALING_RULES` on the
field, `AUTOSCALING_SPEC_RULES` on the spec, attached by `kascade.api.crd`)
restate the cross-field checks with the same messages.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from kascade.api.base import SpecModel

MIN_NOT_ABOVE_MAX = "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"
EXTERNAL_TIER_IS_NOT_SCALED = "engine external deploys nothing to scale and takes no autoscaling"
LAST_TIER_ZERO_NEEDS_A_WAIT = (
    "the last tier answers whatever reaches it: autoscaling.minReplicas 0 on it needs "
    "autoscaling.coldStartWaitSeconds, how long a request waits for a replica to come back"
)
COLD_START_WAIT_ONLY_ON_LAST_AT_ZERO = (
    "autoscaling.coldStartWaitSeconds is for the last tier at minReplicas 0 only "
    "(a tier before the last that has no replica is skipped, not waited for)"
)


class Autoscaling(SpecModel):
    """Replicas of a tier, moved by an autoscaler from the load the routers send it."""

    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Fewest replicas. 0: the tier scales to zero when idle (KEDA only; an HPA keeps one).",
    )
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas.")
    target_per_replica: int = Field(
        ge=1,
        le=10000,
        description=(
            "Requests in flight and queued per replica the autoscaler aims at: the tier's concurrency at the knee "
            "of its measured throughput (docs/load.md)."
        ),
    )
    scale_down_delay_seconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="How long the load must stay low before replicas are removed (and before scaling to zero).",
    )
    cold_start_wait_seconds: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description=(
            "The last tier at minReplicas 0 only: how long a request waits for a replica to come back before it "
            "fails with 503."
        ),
    )

    @model_validator(mode="after")
    def _bounds_in_order(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(MIN_NOT_ABOVE_MAX)
        return self

    @property
    def scales_to_zero(self) -> bool:
        return self.min_replicas == 0


# CEL on `spec.tiers[].autoscaling`, mirroring `Autoscaling._bounds_in_order`.
_MIN_REPLICAS = f"(has(self.minReplicas) ? self.minReplicas : {Autoscaling.model_fields['min_replicas'].default})"
AUTOSCALING_RULES: list[dict[str, str]] = [
    {"rule": f"{_MIN_REPLICAS} <= self.maxReplicas", "message": MIN_NOT_ABOVE_MAX}
]

# CEL on `spec`, mirroring `ModelCascadeSpec._check_autoscaling`: scale to zero of the last tier is explicit.
_LAST_TIER = "self.tiers[size(self.tiers) - 1]"
_AT_ZERO = "(has({0}.autoscaling.minReplicas) && {0}.autoscaling.minReplicas == 0)"
AUTOSCALING_SPEC_RULES: list[dict[str, str]] = [
    {
        "rule": (
            f"size(self.tiers) == 0 || !has({_LAST_TIER}.autoscaling) || !{_AT_ZERO.format(_LAST_TIER)} || "
            f"has({_LAST_TIER}.autoscaling.coldStartWaitSeconds)"
        ),
        "message": LAST_TIER_ZERO_NEEDS_A_WAIT,
    },
    {
        "rule": (
            "self.tiers.all(t, !has(t.autoscaling) || !has(t.autoscaling.coldStartWaitSeconds) || "
            f"(t.name == {_LAST_TIER}.name && {_AT_ZERO.format('t')}))"
        ),
        "message": COLD_START_WAIT_ONLY_ON_LAST_AT_ZERO,
    },
]
