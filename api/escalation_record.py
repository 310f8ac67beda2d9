"""One record of the escalation log: the contract between the router that writes it and what reads it.

The router writes one per escalated request (`kascade.runtime.escalation.log`),
one per shadow sample with a verdict, and one per probe of a tier a request was
routed past (`RecordKind`); `kascade log` shows them and `kascade distill`
trains on them. Readers check `schema_version` and refuse a newer one. The
Parquet columns are these fields, nested as here
(`kascade.runtime.escalation.segments.arrow_schema`, tested equal).

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

SCHEMA_VERSION = 2  # 2: the `probe` kind and column (a reader of 2 reads 1 alike)


class RecordKind(StrEnum):
    escalation = "escalation"  # the first tiers declined; a later tier answered
    shadow = "shadow"  # an accepted request also asked of the last tier (online calibration; `agreed` set)
    probe = "probe"  # a request routed past a tier on its pre-route score, that tier asked off the path (`probe` set)


class ProbeDraw(StrEnum):
    """Which share of a tier's skipped requests a probe was drawn in (one uniform draw u per skipped request)."""

    calibration = "calibration"  # u < shadowSampleRate: drawn for online calibration like every request; judged
    record = "record"  # shadowSampleRate <= u < probeRate: probed for the record (and the probe counts) only


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


class Probe(_Record):
    """What a probe record adds: the skipped tier's decision on its answer, its pre-route score, how it was drawn.

    The probed tier's answer is the record's only `declined` entry (its score,
    method and threshold), whichever the decision; `answered_by` and `answer`
    are the last tier's, which the caller got. The calibration draws are a
    uniform sample of the tier's skipped requests at the share online
    calibration draws every request (`rate` = shadowSampleRate), so with the
    shadow records they are a uniform sample of all its traffic; the record
    draws add `rate` = probeRate − shadowSampleRate more (all probes together:
    probeRate, or shadowSampleRate where larger).
    """

    kept: bool = Field(description="The tier's accept rule kept its answer: the tier would have answered the caller.")
    keep_probability: float = Field(description="The pre-route score's keep-probability: below skipBelow.")
    draw: ProbeDraw
    rate: float = Field(ge=0, le=1, description="The share of the tier's skipped requests this draw probes.")


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
        default=None,
        description=(
            "Shadow samples: the accepted answer agreed with the last tier. Probes drawn for calibration: the "
            "probed answer did (None when it was not judged)."
        ),
    )
    probe: Probe | None = Field(default=None, description="Probe records: the probed tier's decision and draw.")

    @model_validator(mode="after")
    def _known_version(self) -> EscalationRecord:
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(
                f"record schema version {self.schema_version} is newer than this Kascade reads ({SCHEMA_VERSION})"
            )
        if (self.kind is RecordKind.probe) != (self.probe is not None):
            raise ValueError("a probe record, and only one, carries `probe`")
        return self


def tail_mass(top_logprobs: list[float]) -> float:
    """The probability outside the top-k entries of one position: 1 − Σ exp(logprob), never below 0."""
    return max(0.0, 1.0 - math.fsum(math.exp(logprob) for logprob in top_logprobs))
