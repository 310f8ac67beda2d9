"""The two bases of Kascade's resource types: how a field is spelt on the wire and what is done with unknown ones.

Both use camelCase on the wire (Kubernetes convention) and snake_case in Python.
A spec refuses unknown fields, so a misspelt field is an error rather than a
silent no-op; a status keeps them, so an older operator does not choke on what a
newer one (or a newer router) wrote.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    """Base for every spec type: camelCase aliases, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class StatusModel(BaseModel):
    """Status types allow extra fields: older operators must not choke on newer status."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")
