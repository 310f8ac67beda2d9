"""Label and field selectors, parsed and matched as the API server does.

Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`,
`k>1`, `k<1`, joined by commas (all must hold). Field selectors: `path=v`,
`path==v`, `path!=v` over the fields a kind supports (every kind:
`metadata.name`, `metadata.namespace`). A selector the server cannot parse is a
400 BadRequest, as on a real server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kascade.testing.errors import bad_request

_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # =, !=, in, notin, exists, !, gt, lt
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.operator:
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case "!":
                return not present
            case "gt" | "lt":
                try:
                    number, bound = int(value or ""), int(self.values[0])
                except ValueError:
                    return False
                return number > bound if self.operator == "gt" else number < bound
        return False  # pragma: no cover


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(requirement.matches(labels or {}) for requirement in self.requirements)


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts]


def _check_key(key: str, text: str) -> None:
    if not key or len(key.rsplit("/", 1)[-1]) > 63 or not _KEY.match(key):
        raise bad_request(f"unable to parse requirement: invalid label key {key!r} in {text!r}")


def _check_value(value: str, text: str) -> None:
    if len(value) > 63 or not _VALUE.match(value):
        raise bad_request(f"unable to parse requirement: invalid label value {value!r} in {text!r}")


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse `?labelSelector=`; raises a 400 ApiError on a malformed selector."""
    if text is None or not text.strip():
        return LabelSelector()
    requirements = []
    for part in _split_top_level(text):
        if not part:
            raise bad_request(f"unable to parse requirement: found '', expected: identifier in {text!r}")
        set_match = re.fullmatch(r"(\S+)\s+(in|notin)\s*\((.*)\)", part)
        if set_match:
            key, operator, raw_values = set_match.groups()
            values = tuple(value.strip() for value in raw_values.split(",")) if raw_values.strip() else ()
            if not values:
                raise bad_request(
                    f"unable to parse requirement: for 'in', 'notin' operators, values set can't be empty in {text!r}"
                )
            _check_key(key, text)
            for value in values:
                _check_value(value, text)
            requirements.append(Requirement(key, operator, values))
            continue
        binary = re.fullmatch(r"([^=!<>\s]+)\s*(==|=|!=|>|<)\s*(\S*)", part)
        if binary:
            key, operator, value = binary.groups()
            _check_key(key, text)
            operator = {"==": "=", ">": "gt", "<": "lt"}.get(operator, operator)
            if operator in ("gt", "lt") and not re.fullmatch(r"-?\d+", value):
                raise bad_request(
                    f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer in {text!r}"
                )
            _check_value(value, text)
            requirements.append(Requirement(key, operator, (value,)))
            continue
        if part.startswith("!"):
            key = part[1:].strip()
            _check_key(key, text)
            requirements.append(Requirement(key, "!"))
            continue
        if " " in part:
            raise bad_request(
                f"unable to parse requirement: found {part.split()[1]!r}, expected: in, notin, =, ==, !=, gt, lt in {text!r}"
            )
        _check_key(part, text)
        requirements.append(Requirement(part, "exists"))
    return LabelSelector(tuple(requirements))


def selector_from_label_selector_object(selector: Mapping[str, Any] | None) -> LabelSelector:
    """A `metav1.LabelSelector` ({matchLabels, matchExpressions}) as a LabelSelector."""
    if not selector:
        return LabelSelector()
    requirements = [Requirement(key, "=", (str(value),)) for key, value in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        operator = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}[expression["operator"]]
        requirements.append(Requirement(expression["key"], operator, tuple(expression.get("values") or ())))
    return LabelSelector(tuple(requirements))


# --- field selectors --------------------------------------------------------

FieldGetter = Callable[[Mapping[str, Any]], Any]


def _path_getter(path: str) -> FieldGetter:
    def get(obj: Mapping[str, Any]) -> Any:
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        return node

    return get


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    operator: str  # = or !=
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        actual = _path_getter(self.path)(obj)
        actual_text = "" if actual is None else str(actual).lower() if isinstance(actual, bool) else str(actual)
        return (actual_text == self.value) == (self.operator == "=")


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(requirement.matches(obj) for requirement in self.requirements)


BASE_FIELDS = frozenset({"metadata.name", "metadata.namespace"})


def parse_field_selector(text: str | None, supported: frozenset[str] = BASE_FIELDS) -> FieldSelector:
    """Parse `?fieldSelector=` for a kind that supports the given field paths."""
    if text is None or not text.strip():
        return FieldSelector()
    requirements = []
    for part in _split_top_level(text):
        match = re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*(.*)", part)
        if not match:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        path, operator, value = match.groups()
        if path not in supported:
            raise bad_request(f"field label not supported: {path}")
        requirements.append(FieldRequirement(path, "!=" if operator == "!=" else "=", value.strip()))
    return FieldSelector(tuple(requirements))
