"""One way to tell a user what is wrong with a document: the field path as it is written in YAML.

Paths look like `spec.tiers[1].accept`: dots between keys, brackets around
list indexes. The operator's conditions, local mode's messages and the
router's OpenAI-style error bodies all use this formatter.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError


def field_path(location: Sequence[str | int]) -> str:
    """`("spec", "tiers", 1, "accept")` -> `spec.tiers[1].accept`."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validation_problems(error: ValidationError) -> list[str]:
    """One `path: message` per problem (no path for a problem of the whole document)."""
    problems = []
    for item in error.errors():
        where = field_path(item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return problems
