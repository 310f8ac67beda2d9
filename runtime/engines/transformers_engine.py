"""An in-process transformers model behind the `Engine` interface, speaking vLLM's wire format.

Causal LMs serve chat and completions; sequence classifiers serve vLLM's
classify API. Decoding is a plain loop over the model with a KV cache rather
than `model.generate`: each step yields one token with its raw logprobs, so
streaming, stop strings, logprobs and cancellation fall out naturally.

Model work runs in one worker thread per request, serialised by a lock (one
request uses the model at a time), and feeds an asyncio queue, so the event
loop never blocks. Closing a stream sets a flag the worker checks before
every token.

torch and transformers are imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kascade.runtime.engines.base import Endpoint, TierError, TierErrorKind
from kascade.runtime.errors import openai_error

if TYPE_CHECKING:
    import torch

Task = Literal["generate", "classify"]

MAX_TOP_LOGPROBS = 20  # vLLM's default --max-logprobs
DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16  # vLLM's (and OpenAI's) default for /v1/completions
_GREEDY_BELOW = 1e-5  # vLLM samples greedily below this temperature
_MIN_LOGPROB = -9999.0  # vLLM clamps -inf so the JSON stays valid
_API_NAMES = {
    Endpoint.chat: "Chat Completions API",
    Endpoint.completion: "Completions API",
    Endpoint.classify: "Classification API",
}


class ModelLoadError(Exception):
    """The path holds no model this engine can serve; the message says what to do."""


# --------------------------------------------------------------------------- request parsing


def _bad_request(message: str, param: str | None = None) -> TierError:
    return TierError(
        TierErrorKind.client,
        message,
        status=400,
        body=openai_error(message, type="BadRequestError", code=400, param=param),
    )


def _shutting_down() -> TierError:
    message = "The model server is shutting down."
    return TierError(
        TierErrorKind.unavailable,
        message,
        status=503,
        body=openai_error(message, type="ServiceUnavailableError", code=503),
    )


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None  # None: the endpoint's default, capped by the context left
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: no logprobs; k: the chosen token's and the k most likely

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_BELOW


@dataclass(frozen=True)
class GenerationRequest:
    prompt: list[dict[str, str]] | str | list[int]  # chat messages, or a prompt text, or token ids
    params: SamplingParams
    include_usage: bool = False


def _number(
    body: Mapping[str, Any],
    name: str,
    *,
    integer: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    value = body.get(name)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise _bad_request(f"'{name}' must be {'an integer' if integer else 'a number'}, not {value!r}", name)
    if not math.isfinite(value):  # Python's json module accepts NaN and Infinity
        raise _bad_request(f"'{name}' must be a finite number, not {value!r}", name)
    if minimum is not None and value < minimum:
        raise _bad_request(f"'{name}' must be at least {minimum}, got {value}", name)
    if maximum is not None and value > maximum:
        raise _bad_request(f"'{name}' must be at most {maximum}, got {value}", name)
    return value


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad_request(f"'{name}' must be true or false, not {value!r}", name)
    return value


def _stop_strings(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _bad_request("'stop' must be a string or a list of strings", "stop")
    return tuple(s for s in stop if s)


def _include_usage(body: Mapping[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise _bad_request("Stream options can only be defined when `stream=True`.", "stream_options")
    if not isinstance(options, dict):
        raise _bad_request("'stream_options' must be an object", "stream_options")
    return _flag(options, "include_usage")


def _sampling_params(body: Mapping[str, Any], *, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
    n = _number(body, "n", integer=True, minimum=1)
    if n not in (None, 1):
        raise _bad_request("Only n=1 is supported by this server.", "n")
    top_k = _number(body, "top_k", integer=True, minimum=-1)
    temperature = _number(body, "temperature", minimum=0)
    top_p = _number(body, "top_p", minimum=0, maximum=1)
    if top_p is not None and top_p <= 0:
        raise _bad_request("'top_p' must be in (0, 1]", "top_p")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else float(temperature),
        top_p=1.0 if top_p is None else float(top_p),
        top_k=0 if top_k in (None, -1) else top_k,
        seed=_number(body, "seed", integer=True),
        stop=_stop_strings(body),
        presence_penalty=float(_number(body, "presence_penalty", minimum=-2, maximum=2) or 0.0),
        frequency_penalty=float(_number(body, "frequency_penalty", minimum=-2, maximum=2) or 0.0),
        logprobs=logprobs,
    )


def _message_text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad_request(f"messages[{index}].content: only text parts are supported", "messages")
            texts.append(part["text"])
        return "\n".join(texts)
    raise _bad_request(f"messages[{index}].content must be a string or a list of text parts", "messages")


def parse_chat_request(body: Mapping[str, Any]) -> GenerationRequest:
    """Validate a /v1/chat/completions body (vLLM's ChatCompletionRequest) into plain values."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad_request("'messages' must be a non-empty list of messages", "messages")
    plain: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _bad_request(f"messages[{index}] must be an object with a string 'role'", "messages")
        plain.append({"role": message["role"], "content": _message_text(message.get("content"), index)})

    stream = _flag(body, "stream")
    max_tokens = _number(body, "max_completion_tokens", integer=True, minimum=1)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", integer=True, minimum=1)
    want_logprobs = _flag(body, "logprobs")
    top_logprobs = _number(body, "top_logprobs", integer=True, minimum=0, maximum=MAX_TOP_LOGPROBS)
    if top_logprobs and not want_logprobs:
        raise _bad_request("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
    logprobs = (top_logprobs or 0) if want_logprobs else None
    return GenerationRequest(
        prompt=plain,
        params=_sampling_params(body, max_tokens=max_tokens, logprobs=logprobs),
        include_usage=_include_usage(body, stream),
    )


def parse_completion_request(body: Mapping[str, Any]) -> GenerationRequest:
    """Validate a /v1/completions body (vLLM's CompletionRequest); one prompt per request."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    is_token_ids = isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    if not (isinstance(prompt, str) or is_token_ids) or not prompt:
        raise _bad_request("'prompt' must be a non-empty string (or one list of token ids); batches are not supported", "prompt")
    if _flag(body, "echo"):
        raise _bad_request("'echo' is not supported by this server.", "echo")
    if body.get("suffix"):
        raise _bad_request("'suffix' is not supported by this server.", "suffix")
    best_of = _number(body, "best_of", integer=True, minimum=1)
    if best_of not in (None, 1):
        raise _bad_request("Only best_of=1 is supported by this server.", "best_of")
    stream = _flag(body, "stream")
    return GenerationRequest(
        prompt=prompt,
        params=_sampling_params(
            body,
            max_tokens=_number(body, "max_tokens", integer=True, minimum=1),
            logprobs=_number(body, "logprobs", integer=True, minimum=0, maximum=MAX_TOP_LOGPROBS),
        ),
        include_usage=_include_usage(body, stream),
    )


def parse_classify_inputs(body: Mapping[str, Any]) -> list[str]:
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise _bad_request("'input' must be a string or a non-empty list of strings", "input")
    return texts


def fallback_chat_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt for tokenizers that ship no chat template.

    One `role: content` line per message, then `assistant:` for the model to
    continue. Plain and model-agnostic; a real chat model should carry its own
    template (transformers' `chat_template`), which always wins.
    """
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


# --------------------------------------------------------------------------- decoding helpers


@dataclass(frozen=True)
class TokenStep:
    """One generated token, as the worker thread hands it to the event loop."""

    token_id: int
    token: str  # the token's own text, special tokens included (for logprobs)
    logprob: float | None  # raw model logprob of the chosen token; None when not requested
    top: tuple[tuple[str, float], ...]  # the k most likely tokens, most likely first
    text: str  # output text released by this step ("" while held back)
    finish_reason: str | None = None  # "stop" | "length" on the last step
    stop_reason: str | None = None  # the stop string that ended generation


class IncrementalDetokenizer:
    """Text of a growing token sequence, piece by piece, without re-decoding all of it.

    A token can end inside a multi-byte character (byte-level BPE) or change how
    the previous one renders (SentencePiece spaces), so each step decodes a short
    window and holds text back while it ends in U+FFFD (the same scheme as
    vLLM's and TGI's detokenizers).
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True) if self._read_offset < len(self._ids) else ""

    def _advance(self, *, final: bool) -> str:
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return new_text[len(prefix_text) :]
        return ""


class StopStringMatcher:
    """Cuts the output at the first stop string, which is not part of the output (vLLM's default).

    Text that could still turn out to be the start of a stop string is held
    back, so a streamed answer never shows a stop string it later retracts.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.released = 0
        self.matched: str | None = None

    def push(self, delta: str) -> str:
        """Add new output text; return what may be shown now."""
        if self.matched is not None or not delta:
            return ""
        search_from = max(0, len(self.text) - self.holdback)
        self.text += delta
        hits = [(i, s) for s in self.stops if (i := self.text.find(s, search_from)) >= 0]
        if hits:
            cut, self.matched = min(hits)
            self.text = self.text[:cut]
            return self.flush()
        return self._release(len(self.text) - self.holdback)

    def flush(self) -> str:
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        if end <= self.released:
            return ""
        piece, self.released = self.text[self.released : end], end
        return piece


def sample_next_token(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    output_counts: Mapping[int, int],
) -> int:
    """Pick the next token from one step's logits, shape [vocab], in vLLM's order.

    Penalties on tokens already generated, then temperature, top-k, top-p,
    then a draw from `generator`. Greedy (temperature ~0) takes the argmax of
    the penalised logits.
    """
    import torch

    if output_counts and (params.presence_penalty or params.frequency_penalty):
        ids = torch.tensor(list(output_counts), device=logits.device)
        counts = torch.tensor(list(output_counts.values()), device=logits.device, dtype=logits.dtype)
        logits = logits.clone()
        logits[ids] -= params.frequency_penalty * counts + params.presence_penalty
    if params.greedy:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if 0 < params.top_k < logits.numel():
        kth_best = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already hold top_p of the mass (the first always stays).
        drop = (torch.cumsum(probs, dim=-1) - probs) > params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


# --------------------------------------------------------------------------- response formatting


def _clamp(logprob: float) -> float:
    return max(logprob, _MIN_LOGPROB)


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs(steps: Sequence[TokenStep]) -> dict[str, Any]:
    """`{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}`, one per token."""
    content = []
    for step in steps:
        assert step.logprob is not None
        content.append(
            {
                "token": step.token,
                "logprob": _clamp(step.logprob),
                "bytes": _utf8(step.token),
                "top_logprobs": [{"token": t, "logprob": _clamp(lp), "bytes": _utf8(t)} for t, lp in step.top],
            }
        )
    return {"content": content}


def completion_logprobs(steps: Sequence[TokenStep], initial_text_offset: int = 0) -> dict[str, Any]:
    """The legacy layout: parallel lists; each `top_logprobs` dict holds the chosen token and the top k."""
    result: dict[str, list[Any]] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    offset = initial_text_offset
    for step in steps:
        assert step.logprob is not None
        result["text_offset"].append(offset)
        result["token_logprobs"].append(_clamp(step.logprob))
        result["tokens"].append(step.token)
        top = {step.token: _clamp(step.logprob)}
        for token, logprob in step.top:
            top.setdefault(token, _clamp(logprob))
        result["top_logprobs"].append(top)
        offset += len(step.token)
    return result


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# --------------------------------------------------------------------------- the engine


_END = object()  # the worker's "no more tokens" marker


class TransformersEngine:
    """One transformers model, in this process, behind the `Engine` interface."""

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        task: Task,
        device: Any,
        served_model_name: str,
        max_model_len: int,
        stop_token_ids: frozenset[int] = frozenset(),
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self.task: Task = task
        self._device = device
        self.served_model_name = served_model_name
        self.max_model_len = max_model_len
        self._stop_token_ids = stop_token_ids
        self._lock = threading.Lock()  # one request at a time uses the model
        self._active: set[threading.Event] = set()  # cancel flags of running generations
        self._token_texts: dict[int, str] = {}
        self._closed = False
        self.generated_tokens = 0  # since load; read by tests and metrics

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        model_path: str | Path,
        *,
        task: Task = "generate",
        device: str = "auto",
        served_model_name: str | None = None,
        dtype: Any = None,
    ) -> TransformersEngine:
        """Load a transformers folder; raises ModelLoadError with a message for the user.

        `dtype`: None picks float32 on CPU (half precision is slow there) and
        the checkpoint's own dtype on GPU.
        """
        path = Path(model_path).expanduser()
        if task not in ("generate", "classify"):
            raise ModelLoadError(f"unknown task {task!r}: use 'generate' (chat and completions) or 'classify'")
        if not path.exists():
            raise ModelLoadError(f"model path {path} does not exist")
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} does not hold a transformers model (no config.json); "
                "point --model at a folder written by save_pretrained"
            )

        import torch
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read the model config in {path}: {exc}") from exc
        _check_task_matches(config, task, path)

        try:
            torch_device = torch.device(
                ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
            )
        except RuntimeError as exc:
            raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from exc
        if torch_device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        if dtype is None:
            dtype = torch.float32 if torch_device.type == "cpu" else "auto"
        elif isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)

        auto_class = AutoModelForCausalLM if task == "generate" else AutoModelForSequenceClassification
        try:
            model = auto_class.from_pretrained(path, dtype=dtype).to(torch_device).eval()
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the model in {path}: {exc}") from exc

        max_model_len = getattr(config, "max_position_embeddings", None)
        if not max_model_len:
            tokenizer_limit = getattr(tokenizer, "model_max_length", None) or 0
            max_model_len = tokenizer_limit if 0 < tokenizer_limit < 1_000_000 else 2048

        stop_ids: set[int] = set()
        for source in (getattr(model, "generation_config", None), config):
            eos = getattr(source, "eos_token_id", None) if source is not None else None
            stop_ids.update([eos] if isinstance(eos, int) else (eos or []))
        if tokenizer.eos_token_id is not None:
            stop_ids.add(tokenizer.eos_token_id)

        return cls(
            model=model,
            tokenizer=tokenizer,
            task=task,
            device=torch_device,
            served_model_name=served_model_name or path.name,
            max_model_len=int(max_model_len),
            stop_token_ids=frozenset(stop_ids),
        )

    # ------------------------------------------------------------------ Engine protocol

    async def call(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        self._check_serves(endpoint)
        if endpoint is Endpoint.classify:
            return await self._classify(body)
        request = self._parse(endpoint, body)
        prompt_ids = await asyncio.to_thread(self._encode_prompt, request.prompt)
        params = self._with_max_tokens(request.params, len(prompt_ids), endpoint)
        created = int(time.time())
        async with aclosing(self._generate(prompt_ids, params)) as generation:
            steps = [step async for step in generation]
        text = "".join(step.text for step in steps)
        last = steps[-1]
        usage = _usage(len(prompt_ids), len(steps))
        if endpoint is Endpoint.chat:
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": created,
                "model": self.served_model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": chat_logprobs(steps) if params.logprobs is not None else None,
                        "finish_reason": last.finish_reason,
                        "stop_reason": last.stop_reason,
                    }
                ],
                "usage": usage,
            }
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": created,
            "model": self.served_model_name,
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": completion_logprobs(steps) if params.logprobs is not None else None,
                    "finish_reason": last.finish_reason,
                    "stop_reason": last.stop_reason,
                }
            ],
            "usage": usage,
        }

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        self._check_serves(endpoint)
        if endpoint is Endpoint.classify:
            raise _bad_request("The Classification API does not stream.", "stream")
        request = self._parse(endpoint, body)
        prompt_ids = await asyncio.to_thread(self._encode_prompt, request.prompt)
        params = self._with_max_tokens(request.params, len(prompt_ids), endpoint)
        chat = endpoint is Endpoint.chat
        header = {
            "id": f"chatcmpl-{uuid.uuid4().hex}" if chat else f"cmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.served_model_name,
        }
        if chat:
            yield {
                **header,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                ],
            }
        completion_tokens = 0
        text_offset = 0
        # aclosing: when our consumer closes us, the worker must stop now, not at garbage collection.
        async with aclosing(self._generate(prompt_ids, params)) as generation:
            async for step in generation:
                completion_tokens += 1
                if not step.text and params.logprobs is None and step.finish_reason is None:
                    continue  # nothing a client could see (text held back)
                choice: dict[str, Any] = {"index": 0}
                if chat:
                    choice["delta"] = {"content": step.text}
                    choice["logprobs"] = chat_logprobs([step]) if params.logprobs is not None else None
                else:
                    choice["text"] = step.text
                    choice["logprobs"] = (
                        completion_logprobs([step], text_offset) if params.logprobs is not None else None
                    )
                    text_offset += len(step.token)
                choice["finish_reason"] = step.finish_reason
                choice["stop_reason"] = step.stop_reason
                yield {**header, "choices": [choice]}
        if request.include_usage:
            yield {**header, "choices": [], "usage": _usage(len(prompt_ids), completion_tokens)}

    async def ready(self) -> bool:
        return self._model is not None and not self._closed

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for cancelled in list(self._active):
            cancelled.set()
        await asyncio.to_thread(self._release_model)

    # ------------------------------------------------------------------ internals

    def _release_model(self) -> None:
        with self._lock:  # a running step finishes first
            device = self._device
            self._model = None
            gc.collect()
            if getattr(device, "type", None) == "cuda":
                import torch

                torch.cuda.empty_cache()

    def _check_serves(self, endpoint: Endpoint) -> None:
        if self._closed or self._model is None:
            raise _shutting_down()
        generative = endpoint in (Endpoint.chat, Endpoint.completion)
        if generative != (self.task == "generate"):
            raise _bad_request(f"The model does not support {_API_NAMES[endpoint]}")

    @staticmethod
    def _parse(endpoint: Endpoint, body: Any) -> GenerationRequest:
        if not isinstance(body, Mapping):
            raise _bad_request("the request body must be a JSON object")
        return parse_chat_request(body) if endpoint is Endpoint.chat else parse_completion_request(body)

    def _encode_prompt(self, prompt: list[dict[str, str]] | str | list[int]) -> list[int]:
        tokenizer = self._tokenizer
        if isinstance(prompt, str):
            ids = tokenizer(prompt)["input_ids"]  # special tokens added, as vLLM does for completions
        elif prompt and isinstance(prompt[0], int):
            vocab = len(tokenizer)
            if any(not 0 <= t < vocab for t in prompt):  # type: ignore[operator]
                raise _bad_request(f"prompt token ids must lie in [0, {vocab})", "prompt")
            ids = list(prompt)  # type: ignore[arg-type]
        else:
            if getattr(tokenizer, "chat_template", None):
                try:
                    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
                except Exception as exc:  # a template's own raise_exception(): the messages are at fault
                    raise _bad_request(f"the chat template refused these messages: {exc}", "messages") from exc
            else:
                text = fallback_chat_prompt(prompt)  # type: ignore[arg-type]
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise _bad_request("the prompt is empty after tokenization", "prompt")
        return list(ids)

    def _with_max_tokens(self, params: SamplingParams, prompt_len: int, endpoint: Endpoint) -> SamplingParams:
        room = self.max_model_len - prompt_len
        if room <= 0:
            raise _bad_request(
                f"This model's maximum context length is {self.max_model_len} tokens. However, your request "
                f"has {prompt_len} input tokens. Please reduce the length of the input messages.",
                "messages" if endpoint is Endpoint.chat else "prompt",
            )
        if params.max_tokens is None:
            default = DEFAULT_CHAT_MAX_TOKENS if endpoint is Endpoint.chat else DEFAULT_COMPLETION_MAX_TOKENS
            return replace(params, max_tokens=min(default, room))
        if params.max_tokens > room:
            raise _bad_request(
                f"'max_tokens' or 'max_completion_tokens' is too large: {params.max_tokens}. This model's "
                f"maximum context length is {self.max_model_len} tokens and your request has {prompt_len} "
                f"input tokens ({params.max_tokens} > {self.max_model_len} - {prompt_len}).",
                "max_tokens",
            )
        return params

    def _token_text(self, token_id: int) -> str:
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._tokenizer.decode([token_id], skip_special_tokens=False)
            self._token_texts[token_id] = text
        return text

    async def _generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenStep]:
        """Run the decode loop in a worker thread; yield its steps; stop it when closed early."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancelled.set()

        def work() -> None:
            try:
                while not self._lock.acquire(timeout=0.05):
                    if cancelled.is_set():
                        return
                try:
                    if self._model is None:
                        raise _shutting_down()
                    for step in self._decode(prompt_ids, params, cancelled):
                        emit(step)
                finally:
                    self._lock.release()
            except TierError as exc:
                emit(exc)
            except Exception as exc:  # noqa: BLE001 - torch failures (out of memory, bad kernels): the tier's fault, not the client's
                message = f"generation failed: {type(exc).__name__}: {exc}"
                emit(
                    TierError(
                        TierErrorKind.server,
                        message,
                        status=500,
                        body=openai_error(message, type="InternalServerError", code=500),
                    )
                )
            emit(_END)

        worker = threading.Thread(target=work, name="kascade-decode", daemon=True)
        self._active.add(cancelled)
        worker.start()
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()
            self._active.discard(cancelled)
            # Wait for the worker so the model is free once the stream is closed.
            await asyncio.to_thread(worker.join)

    def _decode(self, prompt_ids: list[int], params: SamplingParams, cancelled: threading.Event) -> Iterator[TokenStep]:
        """The decode loop proper; runs in the worker thread with the model lock held."""
        import torch

        model, device = self._model, self._device
        assert params.max_tokens is not None
        generator = torch.Generator(device=device)
        # Any JSON integer is a valid seed; torch wants one that fits in 64 bits.
        generator.manual_seed(params.seed % 2**64 if params.seed is not None else random.randrange(2**63))
        detokenizer = IncrementalDetokenizer(lambda ids: self._tokenizer.decode(ids, skip_special_tokens=True))
        stops = StopStringMatcher(params.stop)
        output_counts: dict[int, int] = {}
        input_ids = torch.tensor([prompt_ids], device=device)
        past = None
        with torch.inference_mode():
            for index in range(params.max_tokens):
                if cancelled.is_set():
                    return
                out = model(input_ids=input_ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float()
                token_id = sample_next_token(logits, params, generator, output_counts)
                output_counts[token_id] = output_counts.get(token_id, 0) + 1
                self.generated_tokens += 1

                logprob: float | None = None
                top: tuple[tuple[str, float], ...] = ()
                if params.logprobs is not None:
                    # Raw logprobs of the model's own distribution, before penalties,
                    # temperature and top-p: what vLLM returns by default.
                    raw = torch.log_softmax(logits, dim=-1)
                    logprob = float(raw[token_id])
                    if params.logprobs:
                        values, ids = torch.topk(raw, min(params.logprobs, raw.numel()))
                        top = tuple(zip(map(self._token_text, ids.tolist()), values.tolist()))

                is_stop_token = token_id in self._stop_token_ids
                ending = is_stop_token or index == params.max_tokens - 1
                delta = "" if is_stop_token else detokenizer.push(token_id)
                if ending:
                    delta += detokenizer.flush()
                text = stops.push(delta)
                finish: str | None = None
                if stops.matched is not None:
                    finish = "stop"
                elif ending:
                    finish = "stop" if is_stop_token else "length"
                if finish is not None:
                    text += stops.flush()
                yield TokenStep(
                    token_id=token_id,
                    token=self._token_text(token_id),
                    logprob=logprob,
                    top=top,
                    text=text,
                    finish_reason=finish,
                    stop_reason=stops.matched,
                )
                if finish is not None:
                    return
                input_ids = torch.tensor([[token_id]], device=device)

    async def _classify(self, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise _bad_request("the request body must be a JSON object")
        texts = parse_classify_inputs(body)
        created = int(time.time())
        results, prompt_tokens = await asyncio.to_thread(self._classify_texts, texts)
        return {
            "id": f"classify-{uuid.uuid4().hex}",
            "object": "list",
            "created": created,
            "model": self.served_model_name,
            "data": results,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0},
        }

    def _classify_texts(self, texts: list[str]) -> tuple[list[dict[str, Any]], int]:
        import torch

        encoded = [self._tokenizer(text)["input_ids"] for text in texts]
        for index, ids in enumerate(encoded):
            if len(ids) > self.max_model_len:
                raise _bad_request(
                    f"input[{index}] has {len(ids)} tokens; this model's maximum context length is "
                    f"{self.max_model_len} tokens. Please reduce the length of the input.",
                    "input",
                )
        results = []
        # One text at a time: no padding, so no pad-token subtleties between architectures.
        with self._lock, torch.inference_mode():
            if self._model is None:
                raise _shutting_down()
            id2label = getattr(self._model.config, "id2label", None) or {}
            for index, ids in enumerate(encoded):
                logits = self._model(input_ids=torch.tensor([ids], device=self._device)).logits[0].float()
                probs = torch.softmax(logits, dim=-1).tolist()
                best = max(range(len(probs)), key=probs.__getitem__)
                label = id2label.get(best, id2label.get(str(best), f"LABEL_{best}"))
                results.append({"index": index, "label": label, "probs": probs, "num_classes": len(probs)})
        return results, sum(len(ids) for ids in encoded)


def _check_task_matches(config: Any, task: Task, path: Path) -> None:
    architectures = list(getattr(config, "architectures", None) or [])
    if not architectures:
        return  # nothing to go by; the Auto class will try
    classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    if task == "classify" and not classifier:
        raise ModelLoadError(
            f"{path} holds {', '.join(architectures)}, not a sequence classifier; "
            "serve it with --task generate, or give a model saved as *ForSequenceClassification"
        )
    if task == "generate" and classifier:
        raise ModelLoadError(f"{path} holds a sequence classifier ({', '.join(architectures)}); serve it with --task classify")
