"""Building an escalation record from what the router saw: pure, no I/O.

The answering tier was asked for its top-k logprobs with token ids
(`return_tokens_as_token_ids`, vLLM's parameter, which `kascade serve` honours
too): every token and top entry is then named `token_id:<id>`. Entries named
otherwise (an engine that ignored the parameter) give no `TeacherTokens`; the
answer's text is still kept.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kascade.api.escalation_record import (
    DeclinedAnswer,
    EscalationRecord,
    ModelIdentity,
    Probe,
    RecordKind,
    TeacherTokens,
    tail_mass,
)
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.escalation.redaction import Redactor
from kascade.runtime.logprobs import TokenEvidence, choice_token_evidence, class_probs, first_choice
from kascade.runtime.scoring.policy import Decision

if TYPE_CHECKING:
    from kascade.runtime.config import TierConfig

TOKEN_ID_PREFIX = "token_id:"


@dataclass(frozen=True)
class AnswerSeen:
    """A tier's answer as the router saw it: text (or label), finish reason, each token's evidence, class probabilities.

    `evidence` carries the names of the top entries (`TokenEvidence.top_tokens`): the teacher tokens are read from it.
    """

    text: str
    finish_reason: str | None = None
    evidence: tuple[TokenEvidence, ...] = ()
    class_probs: tuple[float, ...] | None = None


def token_id_of(name: Any) -> int | None:
    """The id in a `token_id:<id>` name, or None for a name that is not one."""
    if not isinstance(name, str) or not name.startswith(TOKEN_ID_PREFIX):
        return None
    digits = name[len(TOKEN_ID_PREFIX) :]
    return int(digits) if digits.isdigit() else None


def _choice_part(endpoint: Endpoint, choice: Mapping[str, Any]) -> tuple[str, list[TokenEvidence]]:
    evidence = choice_token_evidence(endpoint, choice, with_names=True)
    if endpoint is Endpoint.chat:
        message = choice.get("message") or choice.get("delta") or {}
        text = message.get("content") if isinstance(message, Mapping) else None
    else:
        text = choice.get("text")
    return text if isinstance(text, str) else "", evidence


def answer_of_response(endpoint: Endpoint, response: Mapping[str, Any]) -> AnswerSeen:
    """Choice 0 of a whole response (or the first input of a classify response)."""
    if endpoint is Endpoint.classify:
        data = response.get("data")
        first = data[0] if isinstance(data, list) and data and isinstance(data[0], Mapping) else {}
        label = first.get("label")
        return AnswerSeen(text="" if label is None else str(label), class_probs=tuple(class_probs(response)) or None)
    choice = first_choice(response)
    if choice is None:
        return AnswerSeen(text="")
    text, evidence = _choice_part(endpoint, choice)
    return AnswerSeen(text=text, finish_reason=choice.get("finish_reason"), evidence=tuple(evidence))


def answer_of_chunks(endpoint: Endpoint, chunks: Sequence[Mapping[str, Any]]) -> AnswerSeen:
    """Choice 0 of a stream, its deltas joined."""
    texts: list[str] = []
    evidence: list[TokenEvidence] = []
    finish_reason = None
    for chunk in chunks:
        choice = first_choice(chunk)
        if choice is None:
            continue
        text, chunk_evidence = _choice_part(endpoint, choice)
        texts.append(text)
        evidence.extend(chunk_evidence)
        finish_reason = choice.get("finish_reason") or finish_reason
    return AnswerSeen(text="".join(texts), finish_reason=finish_reason, evidence=tuple(evidence))


def answer_of(endpoint: Endpoint, answered: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> AnswerSeen:
    """A tier's answer from its whole response, or from the chunks of its stream."""
    return (
        answer_of_response(endpoint, answered)
        if isinstance(answered, Mapping)
        else answer_of_chunks(endpoint, answered)
    )


def teacher_tokens(evidence: Sequence[TokenEvidence]) -> TeacherTokens | None:
    """The tokens as ids with their top-k and tail; None when any name is not a `token_id:<id>`."""
    if not evidence:
        return None
    token_ids, top_ids, top_logprobs, tails = [], [], [], []
    for token in evidence:
        token_id = token_id_of(token.text)
        ids = [token_id_of(name) for name in token.top_tokens]
        if token_id is None or any(i is None for i in ids):
            return None
        token_ids.append(token_id)
        top_ids.append(ids)
        top_logprobs.append(list(token.top_logprobs))
        tails.append(tail_mass(top_logprobs[-1]))
    return TeacherTokens(token_ids=token_ids, top_ids=top_ids, top_logprobs=top_logprobs, tail_mass=tails)


def model_identity(tier: TierConfig) -> ModelIdentity:
    return ModelIdentity(
        tier=tier.name, served_model=tier.served_model, uri=tier.model_uri, revision=tier.model_revision
    )


@dataclass(frozen=True, slots=True)
class DeclinedSeen:
    """A declined answer as the router saw it; the record's `DeclinedAnswer` is built from it, redacted, by the writer."""

    model: ModelIdentity
    text: str
    score: float
    method: str
    threshold: float


def declined_seen(model: ModelIdentity, decision: Decision, answer: AnswerSeen) -> DeclinedSeen:
    return DeclinedSeen(
        model=model,
        text=answer.text,
        score=decision.confidence,
        method=decision.method.value,
        threshold=decision.threshold,
    )


@dataclass(frozen=True)
class EscalationSeen:
    """Everything one escalated (shadow-sampled, probed) request showed the router, before redaction."""

    cascade: str
    endpoint: Endpoint
    body: Mapping[str, Any]
    declined: Sequence[DeclinedSeen]
    answered_by: ModelIdentity
    answer: AnswerSeen
    input_tokens: int
    output_tokens: int
    at: datetime | None = None  # when the answer was complete (the record is built later, off the event loop)
    kind: RecordKind = RecordKind.escalation
    agreed: bool | None = None  # a shadow sample: whether every asked tier agreed with the last tier
    probe: Probe | None = None  # a probe: the probed tier's decision and draw (`declined` holds its answer)


def build_record(seen: EscalationSeen, redactor: Redactor, *, now: datetime | None = None) -> EscalationRecord:
    """The record to keep: redacted request and answers; token ids dropped when redaction changed the answer."""
    request, request_changed = redactor.redact_json(dict(seen.body))
    answer, answer_changed = redactor.redact(seen.answer.text)
    declined_texts, declined_changed = redactor.redact_all(d.text for d in seen.declined)
    declined = [
        DeclinedAnswer(model=d.model, text=text, score=d.score, method=d.method, threshold=d.threshold)
        for d, text in zip(seen.declined, declined_texts, strict=True)
    ]
    return EscalationRecord(
        id=uuid.uuid4().hex,
        cascade=seen.cascade,
        recorded_at=now or seen.at or datetime.now(UTC),
        endpoint=seen.endpoint.value,
        request=json.dumps(request, ensure_ascii=False, separators=(",", ":")),
        declined=declined,
        answered_by=seen.answered_by,
        answer=answer,
        finish_reason=seen.answer.finish_reason,
        tokens=None if answer_changed else teacher_tokens(seen.answer.evidence),
        class_probs=list(seen.answer.class_probs) if seen.answer.class_probs is not None else None,
        input_tokens=seen.input_tokens,
        output_tokens=seen.output_tokens,
        redacted=request_changed or answer_changed or declined_changed,
        kind=seen.kind,
        agreed=seen.agreed,
        probe=seen.probe,
    )
