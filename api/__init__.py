"""Kascade's API types: pydantic models of the custom resources (no kopf, no kubernetes)."""

from kascade.api.counters import CounterFigures, CounterSlot, RetiredCounters, RetiredProcess
from kascade.api.errors import field_path, validation_problems
from kascade.api.model_uri import ModelUri
from kascade.api.modelcascade import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ModelCascade,
    ModelCascadeSpec,
    currency_conflict,
)
from kascade.api.status import ModelCascadeStatus, StatusSummary
from kascade.api.summary import summarize_status

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "CounterFigures",
    "CounterSlot",
    "ModelCascade",
    "ModelCascadeSpec",
    "ModelCascadeStatus",
    "ModelUri",
    "RetiredCounters",
    "RetiredProcess",
    "StatusSummary",
    "currency_conflict",
    "field_path",
    "summarize_status",
    "validation_problems",
]
