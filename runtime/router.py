"""The router: an ASGI app speaking the OpenAI API in front of the tiers.

Routes: POST /v1/chat/completions, POST /v1/completions (both also as SSE
streams), GET /v1/models, POST /classify (vLLM's classify API), GET /healthz
and /readyz. On the metrics port of its own (`metrics_port.py`): /metrics
(Prometheus) and /stats (the ledger's absolute snapshot, the same figures the
router writes into the ModelCascade's status).

Everything the app needs is created in `create_router_app` or its lifespan:
no module-level state, so tests and local mode can run several side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from kascade.api.modelcascade import Task
from kascade.runtime.answer_watch import watch_answers
from kascade.runtime.cascade import Answer, Cascade, CascadeFailed
from kascade.runtime.cluster_status.report import StatusReporter
from kascade.runtime.config import RouterConfig
from kascade.runtime.engines.base import Endpoint, Engine
from kascade.runtime.engines.http import HttpEngine, new_pooled_session
from kascade.runtime.errors import error_response
from kascade.runtime.escalation.log import EscalationLog
from kascade.runtime.http_request import (
    CLIENT_CLOSED_REQUEST,
    BodyError,
    read_json_object,
    unless_disconnected,
)
from kascade.runtime.ledger import Ledger
from kascade.runtime.metrics import RouterMetrics
from kascade.runtime.metrics_port import create_metrics_app
from kascade.runtime.online.calibration_loop import InProcessCalibrator, thresholds_from_status
from kascade.runtime.online.shadow_sampling import ShadowSampler
from kascade.runtime.serving import AppWithMetricsPort, serve
from kascade.runtime.sse import SSE_DONE, sse_event
from kascade.runtime.wire import InvalidRequest, JsonResponse, parse_request

if TYPE_CHECKING:
    import aiohttp

_TASK_ENDPOINTS = {
    Task.chat: {Endpoint.chat, Endpoint.completion},
    Task.completion: {Endpoint.chat, Endpoint.completion},
    Task.classify: {Endpoint.classify},
}
_READY_CACHE_SECONDS = 2.0


@dataclass
class RouterState:
    """What one router process holds: the cascade, its books, and what watches its answers."""

    config: RouterConfig
    cascade: Cascade
    ledger: Ledger
    registry: CollectorRegistry
    client_api_keys: frozenset[str]
    escalation_log: EscalationLog | None = None
    shadow_sampler: ShadowSampler | None = None
    calibrator: InProcessCalibrator | None = None  # local mode with online calibration
    started: float = field(default_factory=time.time)
    ready_checked_at: float = 0.0
    ready_report: dict[str, bool] = field(default_factory=dict)


def create_router_app(
    config: RouterConfig,
    *,
    engines: Mapping[str, Engine] | None = None,
    ledger: Ledger | None = None,
) -> AppWithMetricsPort:
    """Build the router app: the API (`main`, whose lifespan owns the state) and the metrics port's app.

    Tiers with a `url` in the config get an `HttpEngine` over one pooled client
    that the app's lifespan opens and closes. Tiers without a url must be given
    in `engines` (local mode's in-process models); the app does not close those.
    Serve it with `serving.serve` or `serving.BackgroundServer` (two ports).
    """
    given = dict(engines or {})
    missing = [tier.name for tier in config.tiers if tier.url is None and tier.name not in given]
    if missing:
        raise ValueError(f"tier(s) {', '.join(missing)} have no url and no in-process engine")
    ledger = ledger or Ledger({tier.name: tier.price for tier in config.tiers})
    metrics = create_metrics_app()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with new_pooled_session() as session:
            app.state.router = metrics.state.router = state = _router_state(config, given, ledger, session)
            async with (
                _status_reporting(config, ledger, state.cascade),
                _escalation_logging(state.escalation_log),
                _online_calibration(state),
            ):
                yield

    api = Starlette(
        routes=_routes(),
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _method_not_allowed},
    )
    return AppWithMetricsPort(main=api, metrics=metrics)


def _routes() -> list[Route]:
    return [
        Route("/v1/chat/completions", _endpoint_handler(Endpoint.chat), methods=["POST"]),
        Route("/v1/completions", _endpoint_handler(Endpoint.completion), methods=["POST"]),
        Route("/classify", _endpoint_handler(Endpoint.classify), methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]


def _router_state(
    config: RouterConfig, given: Mapping[str, Engine], ledger: Ledger, session: aiohttp.ClientSession
) -> RouterState:
    """The cascade over the given engines, and an `HttpEngine` on the pooled session for every other tier."""
    tier_engines: dict[str, Engine] = dict(given)
    for tier in config.tiers:
        if tier.name not in tier_engines:
            assert tier.url is not None
            tier_engines[tier.name] = HttpEngine(
                tier.url, api_key=tier.read_api_key(), timeout=config.timeout_seconds, session=session
            )
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry, config.cascade, [tier.name for tier in config.tiers])
    escalation_log = (
        EscalationLog(config.escalation_log, process_id=ledger.process_id, ledger=ledger, metrics=metrics)
        if config.escalation_log is not None
        else None
    )
    last_engine = tier_engines[config.tiers[-1].name]
    watch = watch_answers(config, ledger, escalation_log, last_engine, metrics=metrics, session=session)
    cascade = Cascade(config, tier_engines, ledger, metrics, watch=watch)
    in_process = config.shadow_sampling.calibrate_in_process if config.shadow_sampling is not None else None
    return RouterState(
        config=config,
        cascade=cascade,
        ledger=ledger,
        registry=registry,
        client_api_keys=config.read_client_api_keys(),
        escalation_log=escalation_log,
        shadow_sampler=watch.sampler if watch is not None else None,
        calibrator=InProcessCalibrator(in_process, cascade, ledger.counter_slot) if in_process is not None else None,
    )


@contextlib.asynccontextmanager
async def _status_reporting(config: RouterConfig, ledger: Ledger, cascade: Cascade) -> AsyncIterator[None]:
    """Report the ledger to the ModelCascade's status while the app runs, when the config asks for it;
    take the thresholds the operator calibrated from each answer."""
    if config.status_report is None:
        yield
        return
    reporter = StatusReporter(
        config.status_report,
        ledger.counter_slot,
        on_status=lambda status: cascade.set_thresholds(thresholds_from_status(status)),
    )
    async with _running(reporter.run()):
        yield


@contextlib.asynccontextmanager
async def _online_calibration(state: RouterState) -> AsyncIterator[None]:
    """Shadow samples and probes while the app runs (cancelled at the end); in local mode, the calibration step."""
    sampler = state.shadow_sampler
    try:
        if state.calibrator is not None:
            async with _running(state.calibrator.run()):
                yield
        else:
            yield
    finally:
        await state.cascade.close()  # pre-routing's probes first: they hand their pairs to the sampler
        if sampler is not None:
            await sampler.close()


@contextlib.asynccontextmanager
async def _running(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def _escalation_logging(escalation_log: EscalationLog | None) -> AsyncIterator[None]:
    """Write the escalation log while the app runs; at the end (SIGTERM included) flush what is queued."""
    if escalation_log is None:
        yield
        return
    await escalation_log.start()
    try:
        yield
    finally:
        await escalation_log.close()


def _state(request: Request) -> RouterState:
    return request.app.state.router


def _endpoint_handler(endpoint: Endpoint):
    async def handler(request: Request) -> Response:
        return await handle_request(request, endpoint)

    handler.__name__ = f"handle_{endpoint.value}"
    return handler


async def handle_request(request: Request, endpoint: Endpoint) -> Response:
    state = _state(request)
    if not _authorized(request, state.client_api_keys):
        return error_response(401, "a valid API key is required: send it as 'Authorization: Bearer KEY'")
    if endpoint not in _TASK_ENDPOINTS[state.config.task]:
        return error_response(
            404, f"cascade {state.config.cascade!r} serves task {state.config.task.value!r}, not {endpoint.value!r}"
        )
    try:
        body = await read_json_object(request, state.config.max_body_bytes)
    except BodyError as error:
        return error_response(error.status, error.message)
    try:
        parsed = parse_request(endpoint, body)
    except InvalidRequest as error:
        status = 400 if error.param is None else 422
        return error_response(status, error.message, param=error.param)
    if parsed.model != state.config.cascade:
        return error_response(
            404,
            f"the model {parsed.model!r} does not exist; this router serves {state.config.cascade!r}",
            type="NotFoundError",
            param="model",
        )
    streaming = endpoint is not Endpoint.classify and bool(getattr(parsed, "stream", False))
    try:
        if streaming:
            streamed = await unless_disconnected(request, state.cascade.answer_streaming(endpoint, body))
            if streamed is None:
                return Response(status_code=CLIENT_CLOSED_REQUEST)
            return StreamingResponse(
                _sse(streamed.chunks), media_type="text/event-stream", headers=_attribution(streamed)
            )
        answered = await unless_disconnected(request, state.cascade.answer(endpoint, body))
    except CascadeFailed as failure:  # every tier failed, or admission control refused (Retry-After)
        if failure.body is not None and isinstance(failure.body.get("error"), dict):
            return JSONResponse(failure.body, status_code=failure.status, headers=failure.headers)
        return error_response(failure.status, failure.message, headers=failure.headers)
    if answered is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return JsonResponse(answered.response, headers=_attribution(answered))


def _attribution(answer: Answer) -> dict[str, str]:
    headers = {"x-kascade-tier": answer.tier, "x-kascade-escalated": "true" if answer.escalated else "false"}
    if answer.confidence is not None:
        headers["x-kascade-confidence"] = f"{answer.confidence:.4f}"
    if answer.kept_under_load:  # a declined answer, returned because the next tier was full (keepSmall)
        headers["x-kascade-kept-under-load"] = "true"
    if answer.trail:
        headers["x-kascade-trail"] = answer.trail
    return headers


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield sse_event(chunk)
    yield SSE_DONE


def _authorized(request: Request, keys: frozenset[str]) -> bool:
    if not keys:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return any(hmac.compare_digest(token.strip().encode(), key.encode()) for key in keys)


async def list_models(request: Request) -> Response:
    state = _state(request)
    if not _authorized(request, state.client_api_keys):
        return error_response(401, "a valid API key is required: send it as 'Authorization: Bearer KEY'")
    model = {
        "id": state.config.cascade,
        "object": "model",
        "created": int(state.started),
        "owned_by": "kascade",
        "kascade": {"task": state.config.task.value, "tiers": [tier.served_model for tier in state.config.tiers]},
    }
    return JSONResponse({"object": "list", "data": [model]})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the last tier, which always answers, is reachable; every tier is reported."""
    state = _state(request)
    now = time.monotonic()
    if now - state.ready_checked_at > _READY_CACHE_SECONDS:
        checks = await asyncio.gather(*(tier.engine.ready() for tier in state.cascade.tiers), return_exceptions=True)
        state.ready_report = {tier.name: check is True for tier, check in zip(state.cascade.tiers, checks, strict=True)}
        state.ready_checked_at = now
    ready = state.ready_report.get(state.cascade.last_tier.name, False)
    return JSONResponse({"ready": ready, "tiers": state.ready_report}, status_code=200 if ready else 503)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, f"no route {request.url.path}")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(405, f"{request.method} is not allowed on {request.url.path}")


def run_router(*, config_path: Path, port: int, host: str) -> int:
    """`kascade route`: load the config, serve the API on `port` and /metrics, /stats on its metrics_port."""
    from pydantic import ValidationError

    from kascade.api.errors import validation_problems

    try:
        config = RouterConfig.from_yaml(config_path)
    except FileNotFoundError:
        print(f"kascade route: no config file at {config_path}")
        return 2
    except ValidationError as error:
        problems = "\n".join(f"  {problem}" for problem in validation_problems(error))
        print(f"kascade route: the config in {config_path} is invalid:\n{problems}")
        return 2
    if config.metrics_port == port:
        print(f"kascade route: --port {port} is the config's metrics_port; give the API another port")
        return 2
    if any(tier.url is None for tier in config.tiers):
        print("kascade route: every tier needs a url (in-process tiers exist only in local mode, `kascade up`)")
        return 2
    if (sampling := config.shadow_sampling) is not None and sampling.semantic is not None:
        from kascade.runtime.models.catalog import ModelNotAvailable
        from kascade.runtime.models.encoder import require_exported

        try:
            require_exported(Path(sampling.semantic.model_dir))
        except ModelNotAvailable as error:
            print(f"kascade route: matcher semantic: {error.message}")
            return 2
    try:
        serve(create_router_app(config), host=host, port=port, metrics_port=config.metrics_port)
    except SystemExit as exc:  # uvicorn exits when it cannot bind a port, after logging why
        return int(exc.code or 1)
    return 0
