"""One engine interface for every way a tier can answer.

An engine speaks the OpenAI/vLLM wire format as plain dicts: a request body in,
a response body (or a stream of chunk bodies) out, exactly as vLLM's
OpenAI-compatible server would send them, logprobs in vLLM's layout. The
router, the model server and local mode only ever see this interface:

- `HttpEngine` (engines/http.py): any OpenAI-compatible server (vLLM, TGI,
  `kascade serve`, hosted APIs).
- `TransformersEngine` (engines/transformers/): an in-process
  transformers model (causal LM or sequence classifier), CPU or GPU.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class Endpoint(StrEnum):
    chat = "chat"  # POST /v1/chat/completions
    completion = "completion"  # POST /v1/completions
    classify = "classify"  # POST /classify (vLLM's classify API)


class TierErrorKind(StrEnum):
    timeout = "timeout"  # the tier did not answer in time: retry, then escalate
    unavailable = "unavailable"  # refused connection, DNS, 503: retry, then escalate
    server = "server"  # 5xx or an unreadable answer: retry, then escalate
    client = "client"  # 4xx: the request itself is wrong; passed back to the caller


class TierError(Exception):
    """A tier call failed. `status` and `body` carry the tier's own answer where there was one."""

    def __init__(
        self,
        kind: TierErrorKind,
        message: str,
        *,
        status: int | None = None,
        body: dict[str, Any] | None = None,
        no_connection: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.body = body
        # No connection could be made (refused, no route): nothing listens behind the address, which is what a
        # Service with no ready endpoint gives (kube-proxy rejects its connections). A tier scaled to zero.
        self.no_connection = no_connection

    @property
    def retryable(self) -> bool:
        return self.kind is not TierErrorKind.client


@runtime_checkable
class Engine(Protocol):
    """What a tier offers. Implementations raise `TierError` on failure."""

    async def call(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming request; returns the response body."""
        ...

    def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A streaming request (chat or completion): yields each SSE chunk's JSON body.

        Closing the iterator early (aclose) cancels the upstream generation.
        """
        ...

    async def ready(self) -> bool:
        """Whether the tier can take requests now (for /readyz)."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and models."""
        ...
