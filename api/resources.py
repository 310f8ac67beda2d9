"""What a pod needs and where it may run: resources, tolerations, and the patterns of Kubernetes' own fields."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from kascade.api.base import SpecModel

# Kubernetes' own pattern for resource quantities ("4", "500m", "32Gi", "1e3").
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


def _quantity_to_str(value: Any) -> Any:
    """YAML reads `cpu: 4` as an integer; Kubernetes accepts it, and so do we."""
    if isinstance(value, bool):
        return value  # left for the string check to refuse
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        raise ValueError(f"write a fractional quantity as a string, e.g. '500m' or '{value}'")
    return value


# A Kubernetes resource quantity: an integer or a string in YAML, always a string in Python.
# In the CRD it is `x-kubernetes-int-or-string`, as in Kubernetes' own schemas.
Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    Field(pattern=QUANTITY_PATTERN, max_length=64),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN, "maxLength": 64}),
]


class Resources(SpecModel):
    """What one replica of a tier needs."""

    gpus: int = Field(default=0, ge=0, le=64, description="nvidia.com/gpu per replica.")
    gpu_type: str | None = Field(
        default=None,
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
        description=(
            "GPU product as the nvidia.com/gpu.product node label spells it (dashes, no spaces), "
            "e.g. NVIDIA-L4, NVIDIA-A100-SXM4-80GB, NVIDIA-H100-80GB-HBM3."
        ),
    )
    cpu: Quantity | None = Field(default=None, description="CPU request, e.g. 4 or '500m'.")
    memory: Quantity | None = Field(default=None, description="Memory request, e.g. '32Gi'.")


TOLERATION_SECONDS_NEED_NO_EXECUTE = "tolerationSeconds is allowed only with effect NoExecute"


class Toleration(SpecModel):
    """A Kubernetes Toleration, added to the tier's pods (GPU taints are tolerated already)."""

    key: str | None = Field(default=None, max_length=316)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated; Kubernetes allows it with NoExecute only."
    )

    @model_validator(mode="after")
    def _seconds_only_with_no_execute(self) -> Toleration:
        # Restated in CEL in the CRD (`kascade.api.crd.TOLERATION_RULES`).
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(TOLERATION_SECONDS_NEED_NO_EXECUTE)
        return self
