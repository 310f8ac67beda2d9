"""Exact binomial confidence bounds (Clopper–Pearson), in pure Python.

Pure and dependency-free, so the operator (which carries no scipy) can use
the same bounds when it calibrates on live traffic. The regularized
incomplete beta function is evaluated by its continued fraction (Lentz's
method, as in Numerical Recipes §6.4) and inverted by bisection.
"""

from __future__ import annotations

import math

_EPS = 1e-15
_TINY = 1e-300


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the CDF of Beta(a, b) at x (a, b > 0)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def _beta_quantile(q: float, a: float, b: float) -> float:
    low, high = 0.0, 1.0
    for _ in range(100):
        middle = (low + high) / 2.0
        if regularized_beta(a, b, middle) < q:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def upper_bound(events: int, trials: int, delta: float) -> float:
    """The one-sided (1 - delta) Clopper–Pearson upper bound on a rate seen `events` times in `trials`.

    With probability at least 1 - delta over the sample, the true rate is at
    most this. No trials: 1 (nothing is known).
    """
    if not 0 <= events <= trials:
        raise ValueError(f"events must lie in [0, trials]; got {events} of {trials}")
    if events == trials:
        return 1.0
    return _beta_quantile(1.0 - delta, events + 1.0, float(trials - events))


def lower_bound(events: int, trials: int, delta: float) -> float:
    """The one-sided (1 - delta) Clopper–Pearson lower bound; 0 when `events` is 0."""
    if not 0 <= events <= trials:
        raise ValueError(f"events must lie in [0, trials]; got {events} of {trials}")
    if events == 0:
        return 0.0
    return _beta_quantile(delta, float(events), trials - events + 1.0)


def interval(events: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The two-sided Clopper–Pearson interval at `level` (each tail (1 - level) / 2)."""
    tail = (1.0 - level) / 2.0
    return lower_bound(events, trials, tail), upper_bound(events, trials, tail)
