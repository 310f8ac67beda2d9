"""One record of the escalation log: the contract between the router that writes it and what reads it.

The router writes one per escalated request (`kascade.runtime.escalation.log`);
`kascade log` shows them and `kascade distill` trains on them. Readers check
`schema_version` and refuse a newer one. The Parquet columns are these fields,
nested as here (`kascade.runtime.escalation.log.ARROW_SCHEMA`, tested equal).

The answering tier's tokens are kept as ids, not strings, with the top-k
logprobs per position (ids too) and the probability mass outside them (the
tail): a student distilled from the top-k alone learns a biased distribution.
`tokens` is None when the tier gave no ids (an external API, or a caller who
asked for logprobs as text) or when redaction changed the answer (its ids
would still spell what was removed); the answer's text is then the target.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1


class RecordKind(StrEnum):
    escalation = "escalation"  # the first tiers declined; a later tier answered
    shadow = "shadow"  # an accepted request also asked of the last tier (online calibration; `agreed` set)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelIdentity(_Record):
    tier: str
    served_model: str
    uri: str | None = None
    revision: str | None = None


class DeclinedAnswer(_Record):
    """What a tier answered before the request went on, and why it went on."""

    model: ModelIdentity
    text: str
    score: float = Field(description="The confidence score it was declined on.")
    method: str
    threshold: float


class TeacherTokens(_Record):
    """A teacher's tokens, position by position: ids, top-k ids with logprobs, mass outside the top-k.

    The router logs the answering tier's; `kascade distill` trains on them, and
    on the same type from a teacher in process or a teacher server.
    """

    token_ids: list[int]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]
    tail_mass: list[float]

    @model_validator(mode="after")
    def _aligned(self) -> TeacherTokens:
        lengths = {len(self.token_ids), len(self.top_ids), len(self.top_logprobs), len(self.tail_mass)}
        if len(lengths) != 1:
            raise ValueError("token_ids, top_ids, top_logprobs and tail_mass need one entry per position")
        if any(len(ids) != len(logprobs) for ids, logprobs in zip(self.top_ids, self.top_logprobs, strict=True)):
            raise ValueError("top_ids and top_logprobs need one logprob per id")
        return self

    def first(self, positions: int) -> TeacherTokens:
        """The first `positions` positions (an answer cut to fit a length)."""
        if positions >= len(self.token_ids):
            return self
        return TeacherTokens(
            token_ids=self.token_ids[:positions],
            top_ids=self.top_ids[:positions],
            top_logprobs=self.top_logprobs[:positions],
            tail_mass=self.tail_mass[:positions],
        )


class EscalationRecord(_Record):
    schema_version: int = SCHEMA_VERSION
    id: str = Field(description="Unique per record (a UUID4 hex).")
    kind: RecordKind = RecordKind.escalation
    cascade: str
    recorded_at: datetime = Field(description="When the answer was complete (UTC).")
    endpoint: str = Field(description="chat, completion or classify.")
    request: str = Field(description="The request body as JSON (messages or prompt, generation settings), redacted.")
    declined: list[DeclinedAnswer]
    answered_by: ModelIdentity
    answer: str = Field(description="The answering tier's text (classify: its label), redacted.")
    finish_reason: str | None = None
    tokens: TeacherTokens | None = None
    class_probs: list[float] | None = Field(default=None, description="classify: the answering tier's probabilities.")
    input_tokens: int = 0
    output_tokens: int = 0
    redacted: bool = Field(default=False, description="Something was removed from the request or the answer.")
    agreed: bool | None = Field(
        default=None, description="Shadow samples: the accepted answer agreed with the last tier."
    )

    @model_validator(mode="after")
    def _known_version(self) -> EscalationRecord:
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(
                f"record schema version {self.schema_version} is newer than this Kascade reads ({SCHEMA_VERSION})"
            )
        return self


def tail_mass(top_logprobs: list[float]) -> float:
    """The probability outside the top-k entries of one position: 1 − Σ exp(logprob), never below 0."""
    return max(0.0, 1.0 - math.fsum(math.exp(logprob) for logprob in top_logprobs))
