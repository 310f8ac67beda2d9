"""The requests this engine serves: the router's wire types (`kascade.runtime.wire`), narrowed to what it supports.

Validation is pydantic's, through `wire.validate_body`; what remains here is
what the wire types cannot say: one choice per request, one prompt, no echo,
and the defaults vLLM applies. Every refusal is a 400 with an OpenAI error body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from kascade.runtime.engines.base import TierError, TierErrorKind
from kascade.runtime.engines.transformers.sampling import SamplingParams
from kascade.runtime.errors import openai_error
from kascade.runtime.wire import (
    MAX_TOP_LOGPROBS,
    ChatCompletionRequest,
    ClassificationRequest,
    CompletionRequest,
    InvalidRequest,
    RequestModel,
    WireModel,
    validate_body,
)

Prompt = list[dict[str, str]] | str | list[int]  # chat messages, or a prompt text, or token ids


def bad_request(message: str, param: str | None = None) -> TierError:
    return TierError(
        TierErrorKind.client,
        message,
        status=400,
        body=openai_error(message, type="BadRequestError", code=400, param=param),
    )


class _VllmSampling(WireModel):
    """vLLM's sampling parameters beyond OpenAI's, and what a one-model engine relaxes."""

    model_config = ConfigDict(allow_inf_nan=False)  # Python's json reads NaN and Infinity; no sampler can use them
    model: str | None = None  # `kascade serve` checks the name; the engine serves the one model it holds
    top_k: int | None = Field(default=None, ge=-1)  # -1 and 0: no top-k filtering
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    # Logprobs name tokens `token_id:<id>` instead of their text (what the escalation log keeps).
    return_tokens_as_token_ids: bool | None = None
    # vLLM's logprobs of the prompt's own tokens, with the top k at each position (a teacher scoring a sample).
    prompt_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("stream_options", check_fields=False)
    @classmethod
    def _only_when_streaming(cls, options: Any, info: ValidationInfo) -> Any:
        if options is not None and not info.data.get("stream"):
            raise PydanticCustomError("stream_options", "Stream options can only be defined when `stream=True`.")
        return options


class ChatMessage(WireModel):
    role: str
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content: Any) -> Any:
        if isinstance(content, list) and not all(
            part.get("type") == "text" and isinstance(part.get("text"), str) for part in content
        ):
            raise PydanticCustomError("text_parts_only", "only text parts are supported")
        return content

    def plain(self) -> dict[str, str]:
        """`{"role", "content"}` with the content as one text (parts joined by newlines)."""
        content = self.content
        text = "\n".join(part["text"] for part in content) if isinstance(content, list) else (content or "")
        return {"role": self.role, "content": text}


class EngineChatRequest(_VllmSampling, ChatCompletionRequest):
    messages: list[ChatMessage] = Field(min_length=1)  # type: ignore[assignment]

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, top_logprobs: int | None, info: ValidationInfo) -> int | None:
        if top_logprobs and not info.data.get("logprobs"):
            raise PydanticCustomError("top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true.")
        return top_logprobs


class EngineCompletionRequest(_VllmSampling, CompletionRequest):
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)


class EngineClassificationRequest(ClassificationRequest):
    model: str | None = None  # type: ignore[assignment]
    input: str | Annotated[list[str], Field(min_length=1)]


@dataclass(frozen=True)
class GenerationRequest:
    prompt: Prompt
    params: SamplingParams
    include_usage: bool = False
    prompt_logprobs: int | None = None  # completions only, and not streamed


def _validated(model: type[RequestModel], body: Any) -> RequestModel:
    try:
        return validate_body(model, body)
    except InvalidRequest as invalid:
        raise bad_request(invalid.message, invalid.param) from None


def _sampling_params(
    request: EngineChatRequest | EngineCompletionRequest, *, max_tokens: int | None, logprobs: int | None
) -> SamplingParams:
    if request.n not in (None, 1):
        raise bad_request("Only n=1 is supported by this server.", "n")
    stops = [request.stop] if isinstance(request.stop, str) else (request.stop or [])
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else float(request.temperature),
        top_p=1.0 if request.top_p is None else float(request.top_p),
        top_k=0 if request.top_k in (None, -1) else request.top_k,
        seed=request.seed,
        stop=tuple(s for s in stops if s),
        presence_penalty=float(request.presence_penalty or 0.0),
        frequency_penalty=float(request.frequency_penalty or 0.0),
        logprobs=logprobs,
        tokens_as_ids=bool(request.return_tokens_as_token_ids),
    )


def _include_usage(request: EngineChatRequest | EngineCompletionRequest) -> bool:
    return bool(request.stream_options and request.stream_options.include_usage)


def parse_chat_request(body: Any) -> GenerationRequest:
    """Validate a /v1/chat/completions body (vLLM's ChatCompletionRequest) into plain values."""
    request = _validated(EngineChatRequest, body)
    if request.prompt_logprobs is not None:
        raise bad_request("'prompt_logprobs' is supported on /v1/completions only by this server.", "prompt_logprobs")
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    logprobs = (request.top_logprobs or 0) if request.logprobs else None
    return GenerationRequest(
        prompt=[message.plain() for message in request.messages],
        params=_sampling_params(request, max_tokens=max_tokens, logprobs=logprobs),
        include_usage=_include_usage(request),
    )


def parse_completion_request(body: Any) -> GenerationRequest:
    """Validate a /v1/completions body (vLLM's CompletionRequest); one prompt per request."""
    request = _validated(EngineCompletionRequest, body)
    prompt: Any = request.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    is_token_ids = isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)
    if not (isinstance(prompt, str) or is_token_ids) or not prompt:
        raise bad_request(
            "'prompt' must be a non-empty string (or one list of token ids); batches are not supported", "prompt"
        )
    if request.echo:
        raise bad_request("'echo' is not supported by this server.", "echo")
    if request.suffix:
        raise bad_request("'suffix' is not supported by this server.", "suffix")
    if request.best_of not in (None, 1):
        raise bad_request("Only best_of=1 is supported by this server.", "best_of")
    if request.prompt_logprobs is not None and request.stream:
        raise bad_request("'prompt_logprobs' is not supported with stream by this server.", "prompt_logprobs")
    return GenerationRequest(
        prompt=prompt,
        params=_sampling_params(request, max_tokens=request.max_tokens, logprobs=request.logprobs),
        include_usage=_include_usage(request),
        prompt_logprobs=request.prompt_logprobs,
    )


def parse_classify_inputs(body: Any) -> list[str]:
    """The texts of a /classify body (vLLM's ClassificationRequest), one string or a non-empty list."""
    texts = _validated(EngineClassificationRequest, body).input
    return [texts] if isinstance(texts, str) else list(texts)
