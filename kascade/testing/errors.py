"""The API server's refusals, as `Status` objects with the real server's reasons and codes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Cause:
    """One entry of `details.causes`: what was wrong, and where (a field path like `spec.tiers[0].name`)."""

    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, FieldValueDuplicate, ...
    message: str
    field: str

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}

    def line(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


def invalid_value(field: str, value: Any, message: str) -> Cause:
    return Cause("FieldValueInvalid", f"Invalid value: {json.dumps(value)}: {message}", field)


def required_value(field: str, detail: str = "") -> Cause:
    return Cause("FieldValueRequired", f"Required value{': ' + detail if detail else ''}", field)


def forbidden_value(field: str, detail: str) -> Cause:
    return Cause("FieldValueForbidden", f"Forbidden: {detail}", field)


def immutable_value(field: str, value: Any) -> Cause:
    return invalid_value(field, value, "field is immutable")


@dataclass
class ApiError(Exception):
    """A refusal: rendered as a `Status` object with `code` as the HTTP status."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def _details(plural: str, group: str, name: str | None) -> dict[str, Any]:
    details: dict[str, Any] = {"kind": plural}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    return details


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{_qualified(plural, group)} "{name}" not found', _details(plural, group, name))


def resource_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{_qualified(plural, group)} "{name}" already exists', _details(plural, group, name)
    )


def conflict(plural: str, group: str, name: str, why: str | None = None) -> ApiError:
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(plural, group)} "{name}": {why}',
        _details(plural, group, name),
    )


def invalid(kind: str, group: str, name: str, causes: list[Cause]) -> ApiError:
    lines = [cause.line() for cause in causes]
    summary = lines[0] if len(lines) == 1 else f"[{', '.join(lines)}]"
    details: dict[str, Any] = {"name": name, "kind": kind, "causes": [cause.to_dict() for cause in causes]}
    if group:
        details["group"] = group
    return ApiError(422, "Invalid", f'{kind}{"." + group if group else ""} "{name}" is invalid: {summary}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden(message: str, plural: str = "", group: str = "", name: str = "") -> ApiError:
    return ApiError(403, "Forbidden", message, _details(plural, group, name) if plural else None)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> ApiError:
    return ApiError(405, "MethodNotAllowed", message, {})


def unsupported_media_type(content_type: str, supported: list[str]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: {', '.join(supported)}"
        if content_type
        else "the request has no Content-Type",
    )


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)
