"""What the router reads and writes on the wire: the request bodies it accepts, and JSON itself.

Wire models allow extra fields (the OpenAI API grows; tiers may accept
engine-specific parameters) but refuse wrong types, so a bad body gets a clear
error at the router instead of a confusing one from a tier. The router forwards
the caller's original JSON object, not the validated model, so nothing is lost.

JSON on the hot path (a request's body, the call to a tier and its answer, the
answer to the caller) goes through `decode_json`, `encode_json` and
`JsonResponse`: orjson, several times faster than the standard library's.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from kascade.api.errors import field_path, validation_problems
from kascade.runtime.engines.base import Endpoint


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(WireModel):
    include_usage: bool | None = None


MAX_TOP_LOGPROBS = 20  # vLLM's default --max-logprobs


class ChatCompletionRequest(WireModel):
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None


class CompletionRequest(WireModel):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None


class ClassificationRequest(WireModel):
    model: str
    input: str | list[str]


RouterRequest = ChatCompletionRequest | CompletionRequest | ClassificationRequest  # each names its `model`

REQUEST_MODELS: dict[Endpoint, type[RouterRequest]] = {
    Endpoint.chat: ChatCompletionRequest,
    Endpoint.completion: CompletionRequest,
    Endpoint.classify: ClassificationRequest,
}


class InvalidRequest(Exception):
    """The body is not a valid request; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


RequestModel = TypeVar("RequestModel", bound=WireModel)


def validate_body(model: type[RequestModel], body: Any) -> RequestModel:
    """`body` as `model`, or InvalidRequest naming the first problem (YAML-style path) and how many more there are.

    The router validates with the models above; an engine with narrower
    support validates with its own subclasses of them.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as error:
        param = field_path(error.errors()[0]["loc"]) or None
        message = validation_problems(error)[0]
        more = error.error_count() - 1
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise InvalidRequest(message, param) from error


def parse_request(endpoint: Endpoint, body: Any) -> RouterRequest:
    return validate_body(REQUEST_MODELS[endpoint], body)


def decode_json(data: bytes | bytearray | memoryview | str) -> Any:
    """JSON text as Python values; ValueError when it is not JSON.

    Strict JSON: NaN, Infinity and lone UTF-16 surrogates are refused, and an
    integer beyond 64 bits is read as a float.
    """
    return orjson.loads(data)


def encode_json(value: Any) -> bytes:
    """`value` as compact UTF-8 JSON (NaN and infinities as null); TypeError for what JSON cannot hold."""
    return orjson.dumps(value)


class JsonResponse(Response):
    """Starlette's JSONResponse, rendered by `encode_json`."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encode_json(content)
