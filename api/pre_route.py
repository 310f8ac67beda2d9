"""A tier's pre-route score: from the prompt alone, whether the tier would keep the request, before it is asked.

Below `skipBelow` the request goes straight to the next tier (the last tier
answers whatever reaches it, so quality cannot drop); the tier's call, its
tokens and its latency are saved. The score is a logistic model over hashed
n-grams of the prompt (`kascade.runtime.scoring.pre_route` says exactly which),
fitted by `kascade calibrate` from an evaluation's answers and refitted by a
distillation run from the escalation log; `skipBelow` is the boldest threshold
that sends at most `maxKeptSkipped` of the requests the tier would have kept
past it, certified with the fixed-sequence bound at the calibration's confidence.

Part of the ModelCascade API; the CRD's CEL rules (`kascade.api.crd.PRE_ROUTE_RULES`)
restate the cross-field checks with the same messages.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from enum import StrEnum

from pydantic import Field, model_validator

from kascade.api.base import SpecModel

LAST_TIER_IS_NOT_PRE_ROUTED = "answers whatever reaches it and takes no preRoute"
PRE_ROUTE_WEIGHTS_PER_DIMENSION = (
    "preRoute.weights must be base64 of `dimensions` little-endian float32 values (4 bytes each), all finite"
)


class PreRouteFeatures(StrEnum):
    """What the pre-route score reads of the prompt."""

    hashed_ngrams = "hashedNgrams"  # word 1-2-grams and character 4-grams, hashed into `dimensions` buckets


class PreRouteFit(SpecModel):
    """Where the parameters came from: written by `kascade calibrate` or a distillation run, read by people."""

    examples: int = Field(ge=0, description="Prompts the score was fitted on.")
    held_out_auroc: float | None = Field(
        default=None, ge=0, le=1, description="How well it told kept from declined on prompts it was not fitted on."
    )
    kept_skipped_bound: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="The certified upper bound on the share of kept requests sent past the tier at skipBelow.",
    )
    source: str | None = Field(default=None, max_length=253, description="What it was fitted from.")


class PreRoute(SpecModel):
    """Skips the tier, before it is asked, for prompts it would probably not keep."""

    features: PreRouteFeatures = Field(default=PreRouteFeatures.hashed_ngrams, description="What the score reads.")
    dimensions: int = Field(ge=16, le=1 << 16, description="Hash buckets: the length of `weights`.")
    weights: str = Field(
        min_length=1,
        max_length=4 * ((4 * (1 << 16) + 2) // 3),
        description="The logistic model's weights: base64 of `dimensions` little-endian float32 values.",
    )
    bias: float = Field(allow_inf_nan=False, description="The logistic model's intercept.")
    skip_below: float = Field(
        ge=0,
        le=1,
        description="Requests whose predicted probability that this tier keeps them is below this skip the tier.",
    )
    max_kept_skipped: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description=(
            "The goal skipBelow is chosen for: at most this share of the requests the tier would have kept is "
            "sent past it (certified at the calibration's confidence)."
        ),
    )
    probe_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description=(
            "Share of skipped requests still asked of the tier, off the response path, paid and counted like "
            "shadow calls: they keep the samples online calibration and the next fit read uniform."
        ),
    )
    fitted: PreRouteFit | None = Field(default=None, description="Where the parameters came from.")

    @model_validator(mode="after")
    def _weights_fit(self) -> PreRoute:
        # Restated in CEL in the CRD (the base64 length); the decoding and finiteness checks are the model's.
        try:
            raw = base64.b64decode(self.weights, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"{PRE_ROUTE_WEIGHTS_PER_DIMENSION}: {error}") from None
        if len(raw) != 4 * self.dimensions:
            raise ValueError(
                f"{PRE_ROUTE_WEIGHTS_PER_DIMENSION}; got {len(raw) // 4} values for {self.dimensions} dimensions"
            )
        if not all(math.isfinite(value) for (value,) in struct.iter_unpack("<f", raw)):
            raise ValueError(PRE_ROUTE_WEIGHTS_PER_DIMENSION)
        return self

    def weight_values(self) -> tuple[float, ...]:
        """The weights, decoded (validated already)."""
        return tuple(value for (value,) in struct.iter_unpack("<f", base64.b64decode(self.weights)))

    @staticmethod
    def encode_weights(values: list[float] | tuple[float, ...]) -> str:
        """The `weights` string of these values (float32, little-endian, base64)."""
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
