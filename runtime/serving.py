"""Serve ASGI apps with uvicorn: one process, one event loop, one or two listening ports.

An app with a metrics port (`AppWithMetricsPort`: the router) is served on
two sockets by one uvicorn server, so one lifespan, one loop and one shutdown
cover both; each connection goes to the app of the port it arrived on.
`serve` runs in the foreground (`kascade route`), `BackgroundServer` in a
thread (local mode, tests, benchmarks). Both run on uvloop and httptools
where they are installed (uvicorn's `auto`; they are core dependencies).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


STARTUP_FAILURE = 3  # uvicorn's exit code when the app does not start


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class AppWithMetricsPort:
    """An app whose `/metrics` and `/stats` answer on a port of their own.

    `main` serves the clients (and owns the lifespan); `metrics` serves what
    only a scraper or an operator should read, on a port the client-facing
    Service does not expose and a NetworkPolicy can close.
    """

    main: ASGIApp
    metrics: ASGIApp

    def on_metrics_port(self, metrics_port: int) -> ASGIApp:
        """The one ASGI app uvicorn runs: a connection to `metrics_port` goes to `metrics`, every other to `main`."""
        main, metrics = self.main, self.metrics

        async def by_port(scope: Scope, receive: Receive, send: Send) -> None:
            server = scope.get("server")
            arrived_on = server[1] if scope["type"] != "lifespan" and server else None
            await (metrics if arrived_on == metrics_port else main)(scope, receive, send)

        return by_port


# An idle keep-alive connection is kept longer than clients keep theirs (httpx and the openai client: 5 s, uvicorn's
# own default too): a server that closes first races the client's next request on that connection, which then
# fails as a reset no router ever counted (bench/faults_under_load.py saw it about once in 2,300 requests).
KEEP_ALIVE_SECONDS = 75


def _uvicorn_config(app: ASGIApp, host: str, port: int, **options: Any) -> uvicorn.Config:
    """No access log and no X-Forwarded-For rewriting (nothing reads the client's address; it cost 2% of the
    router's CPU), on uvloop and httptools where installed; idle connections kept `KEEP_ALIVE_SECONDS`."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        **options,
    )


def _bind(config: uvicorn.Config, port: int) -> socket.socket:
    """A socket on `config.host:port`, bound as uvicorn binds its own (address family, SO_REUSEADDR).

    Exits (SystemExit) when the port is taken, after uvicorn logs why.
    """
    return uvicorn.Config(config.app, host=config.host, port=port, log_level="warning").bind_socket()


def serve(app: ASGIApp | AppWithMetricsPort, *, host: str, port: int, metrics_port: int | None = None) -> None:
    """Serve `app` on `host:port` until SIGINT or SIGTERM; an `AppWithMetricsPort` also on `host:metrics_port`.

    Exits (SystemExit) when a port cannot be bound or the app does not start, after uvicorn logs why.
    """
    if not isinstance(app, AppWithMetricsPort):
        server = uvicorn.Server(_uvicorn_config(app, host, port))
        server.run()
    else:
        if metrics_port is None or metrics_port == port:
            raise ValueError(f"the metrics port must be set and differ from the API port {port}")
        config = _uvicorn_config(app.on_metrics_port(metrics_port), host, port)
        server = uvicorn.Server(config)
        server.run(sockets=[_bind(config, port), _bind(config, metrics_port)])
    if not server.started:  # the lifespan's startup failed, after uvicorn logged why (as `uvicorn.run` exits)
        raise SystemExit(STARTUP_FAILURE)


class BackgroundServer:
    """`with BackgroundServer(app) as server: ... server.url ...`; the lifespan runs inside the thread.

    An `AppWithMetricsPort` is also served on `metrics_port` (default: a free
    port), at `server.metrics_url`.
    """

    def __init__(
        self,
        app: ASGIApp | AppWithMetricsPort,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        metrics_port: int | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.metrics_port: int | None = None
        self._start_timeout = start_timeout
        if isinstance(app, AppWithMetricsPort):
            self.metrics_port = metrics_port or free_port(host)
            app = app.on_metrics_port(self.metrics_port)
        config = _uvicorn_config(app, host, self.port, lifespan="on", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"uvicorn:{self.port}", daemon=True)

    def _run(self) -> None:
        """uvicorn's own run on one port; on two, the sockets bound here (a taken port ends the thread)."""
        if self.metrics_port is None:
            self._server.run()
            return
        config = self._server.config
        self._server.run(sockets=[_bind(config, self.port), _bind(config, self.metrics_port)])

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    @property
    def metrics_url(self) -> str:
        """Where `/metrics` and `/stats` answer (an `AppWithMetricsPort` only)."""
        if self.metrics_port is None:
            raise AttributeError("this app has no metrics port")
        return _url(self.host, self.metrics_port)

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server on port {self.port} stopped while starting")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server on port {self.port} did not start in {self._start_timeout:g} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
