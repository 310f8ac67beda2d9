"""A measured judge error rate in the bound: the agreement goal to certify on judged agreement. Pure.

With `matcher: judge` the bound certifies agreement *as the judge sees it*:
the rate of requests the small tier keeps while the judge says it disagrees.
What the caller gets wrong is the rate of kept requests that truly disagree,
and that is at most the judged rate plus the rate of pairs the judge calls
agreeing while they truly disagree (its false agreements, over all pairs:
kept or not, so the kept ones are among them):

    P(kept, truly disagrees) <= P(kept, judged disagreeing) + P(judged agreeing, truly disagrees)

So a judge whose false-agreement rate was measured on a set with known
agreement (`bench/matchers_truth.py`: `false_agreements` of `pairs`) is
accounted for by certifying the tightened goal `minAgreement + u` on judged
agreement, where `u` is the one-sided Clopper–Pearson upper bound on that
rate. The two statements each fail with probability at most delta/2 (the
error level 1 - confidence split evenly, a union bound), so the threshold
chosen at confidence 1 - delta/2 meets `minAgreement` on *true* agreement with
probability at least `confidence` — on traffic like both the calibration data
and the set the judge was measured on.
"""

from __future__ import annotations

from dataclasses import dataclass

from kascade.calibration.bounds import upper_bound


@dataclass(frozen=True)
class JudgedGoal:
    """The agreement goal to certify on judged agreement so that the true one holds, and what it is made of."""

    min_agreement: float  # the goal on true agreement
    false_agreement_bound: float  # upper bound on P(judged agreeing, truly disagrees)
    judged_min_agreement: float | None  # the goal on judged agreement; None: the judge's error alone exceeds it
    selection_confidence: float  # the confidence the threshold is chosen at (the other half goes to the judge's bound)


def judged_goal(min_agreement: float, false_agreements: int, pairs: int, *, confidence: float) -> JudgedGoal:
    """The tightened goal for a judge seen agreeing wrongly `false_agreements` times in `pairs` (see the module)."""
    if not 0 <= min_agreement <= 1:
        raise ValueError(f"min_agreement must lie in [0, 1]; got {min_agreement}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    delta = (1.0 - confidence) / 2.0
    bound = upper_bound(false_agreements, pairs, delta)
    tightened = min_agreement + bound
    return JudgedGoal(
        min_agreement=min_agreement,
        false_agreement_bound=bound,
        judged_min_agreement=tightened if tightened <= 1.0 else None,
        selection_confidence=1.0 - delta,
    )
