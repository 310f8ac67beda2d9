"""OpenAI-style error bodies, shared by the router and the model server.

The layout is vLLM's current `ErrorResponse`: clients such as the official
`openai` package read `error.message` and raise by HTTP status, so every error
a user can cause must arrive in this shape, never as a bare traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

# Named after the official client's exception classes where one exists, as vLLM does.
_TYPE_BY_STATUS: dict[int, str] = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    413: "RequestEntityTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_type_for_status(status: int) -> str:
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "InternalServerError" if status >= 500 else "BadRequestError"


def openai_error(
    message: str,
    *,
    type: str,
    code: int | str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`; vLLM puts the HTTP status in `code`."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    type: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = openai_error(message, type=type or error_type_for_status(status), code=status, param=param)
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)
