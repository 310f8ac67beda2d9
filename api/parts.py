"""Small types several parts of the API share: a key of a Secret, and what calls to a model cost."""

from __future__ import annotations

from pydantic import Field

from kascade.api.base import SpecModel


class SecretKeyRef(SpecModel):
    """A key of a Secret in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret.")
    key: str = Field(min_length=1, max_length=253, description="Key inside the Secret.")


class Price(SpecModel):
    """What a tier costs: per token (usage, drives `saved`) and per GPU-hour (the reservation, `reservationCost`)."""

    currency: str = Field(
        default="USD",
        min_length=3,
        max_length=3,
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 code; every tier of a cascade should use the same one.",
    )
    input_per_million: float = Field(default=0.0, ge=0, description="Price per million input tokens.")
    output_per_million: float = Field(default=0.0, ge=0, description="Price per million output tokens.")
    per_gpu_hour: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Price of one GPU for one hour: the operator charges it for every GPU of the tier's ready replicas "
            "(status.cost.reservationCost). For a tier on your own GPUs this is the real bill. Local mode "
            "reserves nothing and reports usage cost only."
        ),
    )
