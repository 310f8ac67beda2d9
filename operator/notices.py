"""The Events a user should see on a cascade, from how its conditions changed. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kascade.api.modelcascade import Condition
from kascade.operator.cascade_resource import plain
from kascade.operator.conditions import DEGRADED, READY


@dataclass(frozen=True)
class Notice:
    """An Event to post on the resource."""

    type: str  # Normal or Warning
    reason: str
    message: str


def _conditions(values: Iterable[Any]) -> dict[str, Condition]:
    result = {}
    for value in values:
        condition = value if isinstance(value, Condition) else Condition.model_validate(plain(value))
        result[condition.type] = condition
    return result


def transition_notices(before: Iterable[Any], after: Iterable[Any]) -> list[Notice]:
    """Events for condition changes a user should hear about: Degraded raised or changed, recovered, Ready."""
    old, new = _conditions(before), _conditions(after)
    notices = []
    was, now = old.get(DEGRADED), new.get(DEGRADED)
    if now is not None and now.status == "True":
        if was is None or was.status != "True" or (was.reason, was.message) != (now.reason, now.message):
            notices.append(Notice("Warning", now.reason, now.message))
    elif was is not None and was.status == "True" and now is not None:
        notices.append(Notice("Normal", "Recovered", f"no longer degraded (was: {was.reason})"))
    ready_was, ready_now = old.get(READY), new.get(READY)
    if ready_now is not None and ready_now.status == "True" and (ready_was is None or ready_was.status != "True"):
        notices.append(Notice("Normal", "Ready", ready_now.message))
    return notices
