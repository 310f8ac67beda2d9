"""What the router serves on its metrics port: `/metrics` (Prometheus) and `/stats` (the ledger's snapshot).

They answer apart from the API port so that the cascade's Service, which
clients reach, does not expose them: the ServiceMonitor scrapes this port
through a Service of its own, and a NetworkPolicy can keep everyone else off
it. Both read the `RouterState` that the API app's lifespan builds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kascade.runtime.errors import error_response

if TYPE_CHECKING:
    from kascade.runtime.router import RouterState


def create_metrics_app() -> Starlette:
    """The metrics port's app; the router's lifespan puts its state in `app.state.router`."""
    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/stats", stats, methods=["GET"]),
        ],
        exception_handlers={404: _not_found, 405: _method_not_allowed},
    )


def _state(request: Request) -> RouterState:
    return request.app.state.router


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(_state(request).registry), media_type=CONTENT_TYPE_LATEST)


async def stats(request: Request) -> Response:
    state = _state(request)
    snapshot = state.ledger.snapshot()
    snapshot["cascade"] = state.config.cascade
    if state.escalation_log is not None:
        snapshot["escalationLog"] = state.escalation_log.stats()
    sampler = state.shadow_sampler
    if sampler is not None:
        snapshot["shadowSampling"] = sampler.stats()
    if state.calibrator is not None and state.calibrator.status is not None:
        snapshot["calibration"] = state.calibrator.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return JSONResponse(snapshot)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, f"no route {request.url.path} on the metrics port: it serves /metrics and /stats")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(405, f"{request.method} is not allowed on {request.url.path}")
