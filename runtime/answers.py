"""What a request through the cascade ends with: an answer (complete or streamed) and who gave it, or a failure.

The router turns an `Answer` into its body and the `x-kascade-*` headers, and a
`CascadeFailed` into an OpenAI-style error with its status and headers
(`Retry-After` on a refusal by admission control).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kascade.runtime.tier_stream import Chunks


class CascadeFailed(Exception):
    """No tier could answer. `status`, `body` and `headers` are what the caller gets."""

    def __init__(
        self, status: int, message: str, *, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body
        self.headers = headers


@dataclass(frozen=True)
class Answer:
    """Who answered and how sure it was; `confidence` is None for the last tier, which is not scored."""

    tier: str
    served_model: str
    confidence: float | None
    escalated: bool
    trail: str  # every tier tried, with its score: "small=0.4123,large"
    kept_under_load: bool  # a declined answer returned because the next tier was full (keepSmall)


@dataclass(frozen=True)
class CompleteAnswer(Answer):
    response: dict[str, Any]


@dataclass(frozen=True)
class StreamingAnswer(Answer):
    chunks: Chunks
