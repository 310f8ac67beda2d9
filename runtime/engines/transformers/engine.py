"""The engine's concurrency: one model, one request at a time, decoding in a worker thread that feeds the event loop.

Model work runs in one worker thread per request, serialised by a lock (one
request uses the model at a time), and feeds an asyncio queue, so the event
loop never blocks. Closing a stream sets a flag the worker checks before
every token.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

from kascade.runtime.engines import vllm_layout as layout
from kascade.runtime.engines.base import Endpoint, TierError, TierErrorKind
from kascade.runtime.engines.transformers.classification import classify_encoded, encode_inputs
from kascade.runtime.engines.transformers.decoding import TokenStep, TokenTexts
from kascade.runtime.engines.transformers.generation import generate_steps, score_prompt
from kascade.runtime.engines.transformers.loading import LoadedModel, Task, load_model
from kascade.runtime.engines.transformers.prompts import encode_prompt, fit_max_tokens
from kascade.runtime.engines.transformers.requests import (
    GenerationRequest,
    bad_request,
    parse_chat_request,
    parse_classify_inputs,
    parse_completion_request,
)
from kascade.runtime.engines.transformers.sampling import SamplingParams
from kascade.runtime.errors import openai_error

_API_NAMES = {
    Endpoint.chat: "Chat Completions API",
    Endpoint.completion: "Completions API",
    Endpoint.classify: "Classification API",
}
_END = object()  # the worker's "no more tokens" marker


def _shutting_down() -> TierError:
    message = "The model server is shutting down."
    return TierError(
        TierErrorKind.unavailable,
        message,
        status=503,
        body=openai_error(message, type="ServiceUnavailableError", code=503),
    )


def _generation_failed(exc: Exception) -> TierError:
    message = f"generation failed: {type(exc).__name__}: {exc}"
    return TierError(
        TierErrorKind.server, message, status=500, body=openai_error(message, type="InternalServerError", code=500)
    )


def _header(endpoint: Endpoint, served_model_name: str) -> layout.ResponseHeader:
    prefix = {Endpoint.chat: "chatcmpl", Endpoint.completion: "cmpl"}.get(endpoint, "classify")
    return layout.ResponseHeader(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), served_model_name)


def _logprobs(steps: list[TokenStep], endpoint: Endpoint, text_offset: int = 0) -> dict[str, Any] | None:
    scored = [step.logprobs for step in steps if step.logprobs is not None]
    if not scored:
        return None
    return (
        layout.chat_logprobs(scored) if endpoint is Endpoint.chat else layout.completion_logprobs(scored, text_offset)
    )


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
        self._token_texts = TokenTexts(lambda token_id: tokenizer.decode([token_id], skip_special_tokens=False))
        self._closed = False
        self.generated_tokens = 0  # since load; read by tests and metrics

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, served_model_name: str) -> TransformersEngine:
        return cls(
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            task=loaded.task,
            device=loaded.device,
            served_model_name=served_model_name,
            max_model_len=loaded.max_model_len,
            stop_token_ids=loaded.stop_token_ids,
        )

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
        """Load a transformers folder (see `loading.load_model`); raises ModelLoadError with a message for the user."""
        loaded = load_model(model_path, task=task, device=device, dtype=dtype)
        return cls.from_loaded(loaded, served_model_name or Path(model_path).expanduser().name)

    # ------------------------------------------------------------------ Engine protocol

    async def call(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        self._check_serves(endpoint)
        if endpoint is Endpoint.classify:
            return await self._classify(body)
        prompt_ids, params, request = await self._prepare(endpoint, body)
        header = _header(endpoint, self.served_model_name)
        scored_prompt = None
        if request.prompt_logprobs is not None:
            scored_prompt = await asyncio.to_thread(self._score_prompt, prompt_ids, request.prompt_logprobs)
        async with aclosing(self._generate(prompt_ids, params)) as generation:
            steps = [step async for step in generation]
        build = layout.chat_completion if endpoint is Endpoint.chat else layout.text_completion
        response = build(
            header,
            "".join(step.text for step in steps),
            logprobs=_logprobs(steps, endpoint),
            finish_reason=steps[-1].finish_reason,
            stop_reason=steps[-1].stop_reason,
            token_usage=layout.usage(len(prompt_ids), len(steps)),
        )
        if scored_prompt is not None:
            response["choices"][0]["prompt_logprobs"] = layout.prompt_logprobs(scored_prompt)
        return response

    def _score_prompt(self, prompt_ids: list[int], top_k: int) -> list[dict[int, tuple[float, int, str]] | None]:
        """In a worker thread, with the model to itself: each prompt token's logprob and rank, and the top k."""
        with self._lock:
            if self._model is None:
                raise _shutting_down()
            return score_prompt(self._model, prompt_ids, top_k, self._device, self._token_texts)

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        self._check_serves(endpoint)
        if endpoint is Endpoint.classify:
            raise bad_request("The Classification API does not stream.", "stream")
        prompt_ids, params, request = await self._prepare(endpoint, body)
        include_usage = request.include_usage
        header = _header(endpoint, self.served_model_name)
        chat = endpoint is Endpoint.chat
        if chat:
            yield layout.chat_role_chunk(header)
        completion_tokens = text_offset = 0
        # aclosing: when our consumer closes us, the worker must stop now, not at garbage collection.
        async with aclosing(self._generate(prompt_ids, params)) as generation:
            async for step in generation:
                completion_tokens += 1
                if not step.text and params.logprobs is None and step.finish_reason is None:
                    continue  # nothing a client could see (text held back)
                build = layout.chat_chunk if chat else layout.completion_chunk
                yield build(
                    header,
                    step.text,
                    logprobs=_logprobs([step], endpoint, text_offset),
                    finish_reason=step.finish_reason,
                    stop_reason=step.stop_reason,
                )
                text_offset += len(step.token)
        if include_usage:
            yield layout.usage_chunk(header, chat=chat, token_usage=layout.usage(len(prompt_ids), completion_tokens))

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
            raise bad_request(f"The model does not support {_API_NAMES[endpoint]}")

    async def _prepare(self, endpoint: Endpoint, body: Any) -> tuple[list[int], SamplingParams, GenerationRequest]:
        """The prompt's token ids, the sampling parameters with `max_tokens` fitted, and the request."""
        request: GenerationRequest = (
            parse_chat_request(body) if endpoint is Endpoint.chat else parse_completion_request(body)
        )
        prompt_ids = await asyncio.to_thread(encode_prompt, self._tokenizer, request.prompt)
        params = fit_max_tokens(request.params, len(prompt_ids), self.max_model_len, endpoint)
        return prompt_ids, params, request

    async def _generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncGenerator[TokenStep, None]:
        """Run the decode loop in a worker thread; yield its steps; stop it when closed early."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancelled.set()

        worker = threading.Thread(
            target=self._decode_in_worker,
            args=(prompt_ids, params, cancelled, emit),
            name="kascade-decode",
            daemon=True,
        )
        self._active.add(cancelled)
        worker.start()
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()
            self._active.discard(cancelled)
            # Wait for the worker so the model is free once the stream is closed.
            await asyncio.to_thread(worker.join)

    def _decode_in_worker(
        self, prompt_ids: list[int], params: SamplingParams, cancelled: threading.Event, emit: Callable[[Any], None]
    ) -> None:
        """The worker thread: wait for the model (or a cancel), decode, hand every step or error to `emit`."""
        try:
            while not self._lock.acquire(timeout=0.05):
                if cancelled.is_set():
                    return
            try:
                if self._model is None:
                    raise _shutting_down()
                steps = generate_steps(
                    self._model,
                    self._tokenizer,
                    prompt_ids,
                    params,
                    device=self._device,
                    stop_token_ids=self._stop_token_ids,
                    token_texts=self._token_texts,
                    cancelled=cancelled,
                )
                for step in steps:
                    self.generated_tokens += 1
                    emit(step)
            finally:
                self._lock.release()
        except TierError as exc:
            emit(exc)
        except Exception as exc:  # noqa: BLE001 - torch failures (out of memory, bad kernels): the tier's fault, not the client's
            emit(_generation_failed(exc))
        emit(_END)

    async def _classify(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = parse_classify_inputs(body)
        header = _header(Endpoint.classify, self.served_model_name)
        encoded = await asyncio.to_thread(encode_inputs, self._tokenizer, texts, self.max_model_len)
        results = await asyncio.to_thread(self._classify_encoded, encoded)
        return layout.classification(header, results, sum(len(ids) for ids in encoded))

    def _classify_encoded(self, encoded: list[list[int]]) -> list[dict[str, Any]]:
        with self._lock:
            if self._model is None:
                raise _shutting_down()
            return classify_encoded(self._model, encoded, self._device)
