"""The model server behind `kascade serve`: one engine, vLLM's OpenAI-compatible routes.

A tier can then run without vLLM (CPU machines, tests) and the router cannot
tell the difference: same paths, same bodies, same SSE chunks, same error
layout. Bad input is always a 4xx with an OpenAI error body, never a 500.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kascade.api.model_uri import ModelUri
from kascade.runtime.engines.base import Endpoint, Engine, TierError
from kascade.runtime.errors import error_response, openai_error
from kascade.runtime.http_request import BodyError, read_json_object
from kascade.runtime.sse import SSE_DONE, EventStreamResponse, aclose_quietly, sse_event

DEFAULT_MAX_BODY_BYTES = 4_194_304


def _tier_error_response(error: TierError) -> JSONResponse:
    status = error.status or 500
    if error.body is not None:
        return JSONResponse(error.body, status_code=status)
    return error_response(status, error.message)


def create_model_server_app(
    engine: Engine,
    served_model_name: str,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """The ASGI app of one model server. Its lifespan closes `engine` at shutdown."""
    server = _ModelServer(engine, served_model_name, max_body_bytes, created=int(time.time()))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await engine.aclose()

    return Starlette(routes=server.routes(), lifespan=lifespan, exception_handlers={HTTPException: _http_error})


@dataclass(frozen=True)
class _ModelServer:
    """One engine behind vLLM's routes: each public method is a route's handler."""

    engine: Engine
    served_model_name: str
    max_body_bytes: int
    created: int

    def routes(self) -> list[Route]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/classify", self.classify, methods=["POST"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]

    async def health(self, request: Request) -> Response:
        if await self.engine.ready():
            return Response(status_code=200)
        return error_response(503, "The model is not ready.")

    async def list_models(self, request: Request) -> JSONResponse:
        card: dict[str, Any] = {
            "id": self.served_model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "kascade",
        }
        max_model_len = getattr(self.engine, "max_model_len", None)
        if max_model_len is not None:
            card["max_model_len"] = max_model_len
        return JSONResponse({"object": "list", "data": [card]})

    async def chat_completions(self, request: Request) -> Response | EventStreamResponse:
        return await self._handle(request, Endpoint.chat)

    async def completions(self, request: Request) -> Response | EventStreamResponse:
        return await self._handle(request, Endpoint.completion)

    async def classify(self, request: Request) -> Response | EventStreamResponse:
        return await self._handle(request, Endpoint.classify)

    async def metrics(self, request: Request) -> Response:
        label = self.served_model_name.replace("\\", "\\\\").replace('"', '\\"')
        generated = getattr(self.engine, "generated_tokens", 0)
        lines = [
            "# HELP kascade_model_server_generated_tokens_total Tokens generated since the model was loaded.",
            "# TYPE kascade_model_server_generated_tokens_total counter",
            f'kascade_model_server_generated_tokens_total{{model="{label}"}} {generated}',
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def _handle(self, request: Request, endpoint: Endpoint) -> Response | EventStreamResponse:
        try:
            body = await read_json_object(request, self.max_body_bytes)
        except BodyError as exc:
            return error_response(exc.status, exc.message)
        model = body.get("model")
        if model is not None and model != self.served_model_name:
            return error_response(404, f"The model `{model}` does not exist.", param="model")
        if endpoint is not Endpoint.classify and body.get("stream") is True:
            return await self._stream(endpoint, body)
        try:
            return JSONResponse(await self.engine.call(endpoint, body))
        except TierError as exc:
            return _tier_error_response(exc)
        except Exception as exc:  # noqa: BLE001 - a bug or a broken model, never the client's input
            return error_response(500, f"The model server failed: {type(exc).__name__}: {exc}")

    async def _stream(self, endpoint: Endpoint, body: dict[str, Any]) -> Response | EventStreamResponse:
        chunks = self.engine.stream(endpoint, body)
        # Wait for the first chunk before answering 200: request errors (bad
        # parameters, prompt too long) surface there and deserve a real 4xx.
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = None
        except TierError as exc:
            await aclose_quietly(chunks)
            return _tier_error_response(exc)
        except Exception as exc:  # noqa: BLE001 - a bug or a broken model, never the client's input
            await aclose_quietly(chunks)
            return error_response(500, f"The model server failed: {type(exc).__name__}: {exc}")
        return EventStreamResponse(_events(first, chunks))


async def _events(first: dict[str, Any] | None, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        if first is not None:
            yield sse_event(first)
        try:
            async for chunk in chunks:
                yield sse_event(chunk)
        except TierError as exc:
            # Headers are gone already; vLLM reports mid-stream failures as an error event.
            yield sse_event(exc.body or openai_error(exc.message, type="InternalServerError", code=500))
        yield SSE_DONE
    finally:
        # Closing the engine's stream is what stops generation when the client leaves.
        await aclose_quietly(chunks)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette answers unknown paths and wrong methods in plain text; clients expect JSON errors."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None) or "error"
    return error_response(status, str(detail), headers=getattr(exc, "headers", None))


class _ServeError(Exception):
    pass


def _resolve_model_path(model: str) -> Path:
    """A plain path as it is; URIs (pkg://, hf://, file://) as local mode resolves them (`model_files`)."""
    if ModelUri.parse(model).is_plain_path:
        return Path(model).expanduser()
    from kascade.runtime.models.files import resolve_model_uri

    try:
        return Path(resolve_model_uri(model))
    except Exception as exc:  # the catalog's message says what is missing and what to do
        raise _ServeError(getattr(exc, "message", None) or f"cannot resolve {model}: {exc}") from exc


def _default_served_name(model: str, path: Path) -> str:
    """The name the user wrote (pkg://NAME, hf://org/NAME@rev, file:///…/NAME), not a cache folder's."""
    location = ModelUri.parse(model)
    if location.is_plain_path:
        return path.resolve().name
    written = location.pkg_name or location.hf_repo_id or location.path or ""
    return written.rstrip("/").rsplit("/", 1)[-1] or path.name


def run_model_server(
    *,
    model: str,
    port: int,
    host: str,
    served_model_name: str | None,
    task: str,
    device: str,
) -> int:
    """`kascade serve`: load the model, serve it until interrupted; returns the exit code.

    2 means the model could not be found or loaded (the message says why).
    """
    try:
        from kascade.runtime.engines.transformers import ModelLoadError, TransformersEngine
        from kascade.runtime.engines.transformers.loading import without_progress_bars
    except ImportError as exc:  # pragma: no cover - only without the [local] extra
        print(f"kascade serve: {exc}. Install the in-process extra: pip install 'kascade[local]'", file=sys.stderr)
        return 2
    try:
        path = _resolve_model_path(model)
        name = served_model_name or _default_served_name(model, path)
        with without_progress_bars():  # in a server's log they are lines of carriage returns
            engine = TransformersEngine.load(path, task=task, device=device, served_model_name=name)  # type: ignore[arg-type]
    except (_ServeError, ModelLoadError) as exc:
        print(f"kascade serve: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"kascade serve: {exc}. Install the in-process extra: pip install 'kascade[local]'", file=sys.stderr)
        return 2

    import uvicorn

    app = create_model_server_app(engine, name)
    print(f"kascade serve: {name} ({task}) on http://{host}:{port}/v1", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    except SystemExit as exc:  # uvicorn exits when it cannot bind the port, after logging why
        return int(exc.code or 1)
    return 0
