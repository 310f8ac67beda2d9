"""The Clopper–Pearson bounds agree with scipy's beta quantiles, and mean what they say."""

from __future__ import annotations

import random

import pytest
from scipy.stats import beta

from kascade.calibration.bounds import interval, lower_bound, upper_bound


@pytest.mark.parametrize(
    ("events", "trials", "delta"),
    [(0, 1, 0.05), (0, 100, 0.05), (3, 300, 0.05), (50, 100, 0.1), (999, 1000, 0.05), (7, 20000, 0.01), (1, 2, 0.3)],
)
def test_bounds_equal_scipys_beta_quantiles(events: int, trials: int, delta: float) -> None:
    assert upper_bound(events, trials, delta) == pytest.approx(
        beta.ppf(1 - delta, events + 1, trials - events), abs=1e-9
    )
    if events:
        assert lower_bound(events, trials, delta) == pytest.approx(
            beta.ppf(delta, events, trials - events + 1), abs=1e-9
        )


def test_edges_say_what_is_known() -> None:
    assert upper_bound(5, 5, 0.05) == 1.0
    assert lower_bound(0, 5, 0.05) == 0.0
    low, high = interval(0, 0)
    assert (low, high) == (0.0, 1.0)
    with pytest.raises(ValueError, match="events must lie"):
        upper_bound(6, 5, 0.05)


def test_the_upper_bound_covers_the_true_rate_at_least_as_often_as_promised() -> None:
    rng = random.Random(7)
    rate, trials, delta = 0.03, 400, 0.1
    covered = sum(
        upper_bound(sum(rng.random() < rate for _ in range(trials)), trials, delta) >= rate for _ in range(400)
    )
    assert covered / 400 >= 1 - delta
