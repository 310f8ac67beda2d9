"""The ModelCascade as the operator receives it from Kopf: plain data, parsed, or why it does not parse. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kascade.api import API_VERSION
from kascade.api.errors import validation_problems
from kascade.api.modelcascade import KIND, ModelCascade


def plain(value: Any) -> Any:
    """kopf's body views as plain dicts and lists (what pydantic and deep copies need)."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def parse_cascade(body: Mapping[str, Any]) -> ModelCascade:
    """The resource as the API types see it (status left out: the operator reads it raw). Raises ValidationError."""
    meta = body.get("metadata") or {}
    return ModelCascade.model_validate(
        {
            "apiVersion": body.get("apiVersion", API_VERSION),
            "kind": body.get("kind", KIND),
            "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
            "spec": plain(body.get("spec") or {}),
        }
    )


def validation_message(error: ValidationError) -> str:
    """A pydantic error as one line a user can act on: `spec.tiers[0].accept: ...; ...`."""
    return "the resource does not parse: " + "; ".join(validation_problems(error))
