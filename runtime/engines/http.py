"""An engine that calls any OpenAI-compatible server over HTTP.

vLLM, TGI, `kascade serve` and hosted APIs all speak this wire format. The
client session is pooled and owned by whoever creates it (the router's
lifespan shares one session between all its HTTP tiers); the engine only
borrows it.

aiohttp rather than httpx on this path: it is the router's hot path, and
profiling under load (docs/benchmarks.md) put two thirds of the router's CPU
in httpx's connection pool bookkeeping; aiohttp's client costs about a third
of that per request. (vLLM's production-stack router made the same choice.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from kascade.runtime.engines.base import Endpoint, TierError, TierErrorKind
from kascade.runtime.sse import iter_sse_json
from kascade.runtime.wire import decode_json, encode_json

_PATHS = {Endpoint.chat: "/chat/completions", Endpoint.completion: "/completions"}


def new_pooled_session(*, max_connections: int = 512) -> aiohttp.ClientSession:
    """One session per process, shared by every HTTP tier; timeouts are set per request.

    Must be created inside the running event loop (the app's lifespan).
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30.0),
        timeout=aiohttp.ClientTimeout(total=None),
        cookie_jar=aiohttp.DummyCookieJar(),  # tiers are APIs; no cookies to carry between callers
        json_serialize_bytes=encode_json,  # orjson: the body of every tier call
    )


class HttpEngine:
    """A tier reached over HTTP. `base_url` is the OpenAI base URL, e.g. http://host:8000/v1."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # vLLM serves classify and health at the server root, beside /v1.
        self.root_url = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0))
        self._session = session
        self._owns_session = session is None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created lazily: a session needs a running loop
            self._session = new_pooled_session()
        return self._session

    def url_for(self, endpoint: Endpoint) -> str:
        if endpoint is Endpoint.classify:
            return f"{self.root_url}/classify"
        return f"{self.base_url}{_PATHS[endpoint]}"

    async def call(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._client().post(
                self.url_for(endpoint), json=body, headers=self._headers, timeout=self._timeout
            ) as response:
                content = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ServerTimeoutError) as error:
            raise TierError(TierErrorKind.timeout, f"timed out: {error!r}") from error
        except aiohttp.ClientError as error:
            raise unreachable(error) from error
        raise_for_tier_status(status, content)
        try:
            answer = decode_json(content)
        except ValueError as error:
            raise TierError(TierErrorKind.server, "the tier answered with something that is not JSON") from error
        if not isinstance(answer, dict):
            raise TierError(TierErrorKind.server, "the tier answered with JSON that is not an object")
        return answer

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            response = await self._client().post(
                self.url_for(endpoint), json=body, headers=self._headers, timeout=self._timeout
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as error:
            raise TierError(TierErrorKind.timeout, f"timed out: {error!r}") from error
        except aiohttp.ClientError as error:
            raise unreachable(error) from error
        try:
            if response.status >= 400:
                raise_for_tier_status(response.status, await response.read())
            async for event in iter_sse_json(response.content):
                yield event
        except (TimeoutError, aiohttp.ServerTimeoutError) as error:
            raise TierError(TierErrorKind.timeout, f"timed out mid-stream: {error!r}") from error
        except aiohttp.ClientError as error:
            raise TierError(TierErrorKind.unavailable, f"connection lost mid-stream: {error!r}") from error
        except ValueError as error:  # an event that is not a JSON object
            raise TierError(TierErrorKind.server, str(error)) from error
        finally:
            # Closing the response closes the connection, which makes vLLM abort the generation.
            response.close()

    async def ready(self) -> bool:
        try:
            async with self._client().get(
                f"{self.base_url}/models", headers=self._headers, timeout=aiohttp.ClientTimeout(total=2.0)
            ) as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()


def unreachable(error: aiohttp.ClientError) -> TierError:
    """A call that got no answer: `no_connection` when no connection could be made at all (refused, no route)."""
    return TierError(
        TierErrorKind.unavailable,
        f"unreachable: {error!r}",
        no_connection=isinstance(error, aiohttp.ClientConnectorError)
        and not isinstance(error, aiohttp.ClientConnectorDNSError | aiohttp.ClientSSLError),
    )


def raise_for_tier_status(status: int, content: bytes) -> None:
    """Turn a tier's error status into a TierError that says whether escalating can help."""
    if status < 400:
        return
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = None
    message = _error_message(body) or content[:200].decode("utf-8", "replace")
    if status in (408, 504):
        raise TierError(TierErrorKind.timeout, f"HTTP {status}: {message}", status=status, body=body)
    if status in (429, 502, 503):
        raise TierError(TierErrorKind.unavailable, f"HTTP {status}: {message}", status=status, body=body)
    if status >= 500:
        raise TierError(TierErrorKind.server, f"HTTP {status}: {message}", status=status, body=body)
    raise TierError(TierErrorKind.client, f"HTTP {status}: {message}", status=status, body=body)


def _error_message(body: dict[str, Any] | None) -> str | None:
    if body is None:
        return None
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(body.get("message"), str):  # older vLLM layout
        return body["message"]
    return None
