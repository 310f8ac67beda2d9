"""Kascade's API types: pydantic models of the custom resources (no kopf, no kubernetes)."""

from kascade.api.modelcascade import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ModelCascade,
    ModelCascadeSpec,
    ModelCascadeStatus,
    StatusSummary,
)
from kascade.api.summary import summarize_status

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "ModelCascade",
    "ModelCascadeSpec",
    "ModelCascadeStatus",
    "StatusSummary",
    "summarize_status",
]
