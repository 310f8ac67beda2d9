"""An engine that calls any OpenAI-compatible server over HTTP.

vLLM, TGI, `kascade serve` and hosted APIs all speak this wire format. The
httpx client is pooled and owned by whoever creates it (the router's lifespan
shares one client between all its HTTP tiers); the engine only borrows it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from kascade.runtime.engines.base import Endpoint, TierError, TierErrorKind
from kascade.runtime.sse import iter_sse_json

_PATHS = {Endpoint.chat: "/chat/completions", Endpoint.completion: "/completions"}


def new_pooled_client(*, max_connections: int = 512) -> httpx.AsyncClient:
    """One client per process, shared by every HTTP tier; timeouts are set per request."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        timeout=None,
    )


class HttpEngine:
    """A tier reached over HTTP. `base_url` is the OpenAI base URL, e.g. http://host:8000/v1."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # vLLM serves classify and health at the server root, beside /v1.
        self.root_url = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._owns_client = client is None
        self._client = client or new_pooled_client()

    def url_for(self, endpoint: Endpoint) -> str:
        if endpoint is Endpoint.classify:
            return f"{self.root_url}/classify"
        return f"{self.base_url}{_PATHS[endpoint]}"

    async def call(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post(
                self.url_for(endpoint), json=body, headers=self._headers, timeout=self._timeout
            )
        except httpx.TimeoutException as error:
            raise TierError(TierErrorKind.timeout, f"timed out: {error!r}") from error
        except httpx.TransportError as error:
            raise TierError(TierErrorKind.unavailable, f"unreachable: {error!r}") from error
        raise_for_tier_status(response.status_code, response.content)
        try:
            answer = response.json()
        except ValueError as error:
            raise TierError(TierErrorKind.server, "the tier answered with something that is not JSON") from error
        if not isinstance(answer, dict):
            raise TierError(TierErrorKind.server, "the tier answered with JSON that is not an object")
        return answer

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        request = self._client.build_request(
            "POST", self.url_for(endpoint), json=body, headers=self._headers, timeout=self._timeout
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as error:
            raise TierError(TierErrorKind.timeout, f"timed out: {error!r}") from error
        except httpx.TransportError as error:
            raise TierError(TierErrorKind.unavailable, f"unreachable: {error!r}") from error
        try:
            if response.status_code >= 400:
                raise_for_tier_status(response.status_code, await response.aread())
            async for event in iter_sse_json(response.aiter_lines()):
                yield event
        except httpx.TimeoutException as error:
            raise TierError(TierErrorKind.timeout, f"timed out mid-stream: {error!r}") from error
        except httpx.TransportError as error:
            raise TierError(TierErrorKind.unavailable, f"connection lost mid-stream: {error!r}") from error
        except ValueError as error:  # an event that is not a JSON object
            raise TierError(TierErrorKind.server, str(error)) from error
        finally:
            # Closing the response closes the connection, which makes vLLM abort the generation.
            await response.aclose()

    async def ready(self) -> bool:
        try:
            response = await self._client.get(f"{self.base_url}/models", headers=self._headers, timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


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
