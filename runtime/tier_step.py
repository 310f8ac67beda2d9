"""One step of the cascade: after a tier was called, accept its answer, escalate, or fail.

Pure: what calling the tier gave (a score, no score for the last tier, or the
error it gave up with once its retries were spent) in, a `Step` out. The one
loop over the tiers in `cascade.py` drives it for complete and streamed answers
alike; `policy.judge*` made the score's decision before.

Rules:
- a tier other than the last is scored: at or above its threshold its answer
  stands, below it the request escalates;
- the last tier is not scored and always answers;
- a tier that gave up (timeout, refused connection, 5xx, 429, after the
  retries `retry_delay` allows) escalates under `onTierError: escalate`,
  unless it is the last; so does a 4xx, since a larger tier often has the
  larger context the request needed;
- otherwise the request fails: the caller gets the last tier's 4xx as is, or
  502 (bad answer), 503 (unreachable) or 504 (timeout) (`failure_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from kascade.api.modelcascade import OnTierError
from kascade.runtime.engines.base import TierError, TierErrorKind
from kascade.runtime.scoring.policy import Decision


class Verdict(Enum):
    accept = "accept"
    escalate = "escalate"
    fail = "fail"


class Reason(Enum):
    confident = "confident"  # scored at or above the tier's threshold
    last_tier = "last_tier"  # the last tier answers unscored
    unsure = "unsure"  # scored below the tier's threshold
    tier_failed = "tier_failed"  # gave up after its retries, and onTierError is escalate
    fail_on_tier_error = "fail_on_tier_error"  # gave up after its retries, and onTierError is fail
    last_tier_failed = "last_tier_failed"  # the last tier gave up: nobody is left to ask


@dataclass(frozen=True)
class Step:
    """What happens after one tier was called, and why."""

    verdict: Verdict
    reason: Reason


# Every step there is; `next_step` hands these out, so deciding allocates nothing on the hot path.
ACCEPT_CONFIDENT = Step(Verdict.accept, Reason.confident)
ACCEPT_LAST_TIER = Step(Verdict.accept, Reason.last_tier)
ESCALATE_UNSURE = Step(Verdict.escalate, Reason.unsure)
ESCALATE_TIER_FAILED = Step(Verdict.escalate, Reason.tier_failed)
FAIL_ON_TIER_ERROR = Step(Verdict.fail, Reason.fail_on_tier_error)
FAIL_LAST_TIER = Step(Verdict.fail, Reason.last_tier_failed)


def next_step(*, is_last: bool, on_tier_error: OnTierError, decision: Decision | None, failed: bool) -> Step:
    """The step after calling a tier: `failed` when it gave up, else its `decision` (None for the last tier)."""
    if failed:
        if is_last:
            return FAIL_LAST_TIER
        return ESCALATE_TIER_FAILED if on_tier_error is OnTierError.escalate else FAIL_ON_TIER_ERROR
    if is_last:
        return ACCEPT_LAST_TIER
    if decision is None:
        raise ValueError("a tier other than the last must be scored")
    return ACCEPT_CONFIDENT if decision.accept else ESCALATE_UNSURE


@dataclass(frozen=True)
class Failure:
    """What the caller gets when the request fails: an HTTP status, a message, the tier's own body if any."""

    status: int
    message: str
    body: dict[str, Any] | None = None


_FAILURE_STATUS = {
    TierErrorKind.timeout: (504, "the answering tier timed out"),
    TierErrorKind.unavailable: (503, "the answering tier is unavailable"),
    TierErrorKind.server: (502, "the answering tier failed"),
}


def failure_of(tier: str, error: TierError) -> Failure:
    """The tier's 4xx as is (its request was wrong); else 502 (bad answer), 503 (unreachable) or 504 (timeout)."""
    if error.kind is TierErrorKind.client and error.status is not None:
        return Failure(error.status, f"tier {tier!r} refused the request: {error.message}", error.body)
    status, what = _FAILURE_STATUS[error.kind]
    return Failure(status, f"{what} (tier {tier!r}): {error.message}")


def retry_delay(error: TierError, attempt: int, *, retries: int, backoff_seconds: float) -> float | None:
    """Seconds to wait before retrying after failed attempt `attempt` (0-based), or None to give up.

    Gives up when the budget of `retries` retries is spent or the error is the
    request's own (a 4xx: asking again cannot help). The wait doubles each
    time: backoff, 2 * backoff, 4 * backoff, ...
    """
    if not error.retryable or attempt >= retries:
        return None
    return backoff_seconds * 2**attempt


def as_tier_error(caught: BaseException, timeout: float) -> TierError:
    """A tier call's failure as a TierError: a timeout becomes one of kind timeout."""
    if isinstance(caught, TierError):
        return caught
    return TierError(TierErrorKind.timeout, f"no answer within {timeout:g} s")
