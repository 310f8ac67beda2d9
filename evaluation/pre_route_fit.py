"""Fitting a tier's pre-route score: from prompts and whether the tier kept each, a `PreRoute` with its skipBelow.

The features are the router's own (`kascade.runtime.scoring.pre_route.hashed_features`
of `request_text` of the request body), so the fitted model reads in
production exactly what it was fitted on. The model is an L2-regularised
logistic regression (scikit-learn, on the sparse hashed buckets); its
weights are stored as float32, and every probability computed here to
choose or measure is computed from those stored weights by the router's own
`keep_probability`.

Three parts of the data, never mixed: the score is fitted on one, skipBelow
is chosen on another (`kascade.calibration.pre_route.choose_skip_below`, so
the fit does not spoil the bound), and what the result does is measured on
a third where there is one. `kascade calibrate --pre-route`, the pre-routing
benchmark and a distillation run's refit call `fit_pre_route` alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kascade.api.pre_route import PreRoute, PreRouteFit
from kascade.calibration.pre_route import SkipChoice, choose_skip_below
from kascade.calibration.prompt_text import request_text
from kascade.evaluation import curves
from kascade.evaluation.datasets import stable_fraction
from kascade.evaluation.records import Example
from kascade.runtime.scoring.pre_route import DEFAULT_DIMENSIONS, hashed_features, keep_probability

REGULARIZATION = 1.0  # scikit-learn's C (inverse L2 strength), measured on the tweets (docs/evaluation.md)
_DEFAULTS = PreRoute.model_fields


@dataclass(frozen=True)
class KeptPrompts:
    """Prompts (as `request_text` gives them) and whether the tier kept each: what a pre-route score learns."""

    texts: tuple[str, ...]
    kept: tuple[bool, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.kept):
            raise ValueError(f"{len(self.texts)} prompts for {len(self.kept)} kept flags")

    def part(self, indices: Sequence[int]) -> KeptPrompts:
        return KeptPrompts(tuple(self.texts[i] for i in indices), tuple(self.kept[i] for i in indices))


def request_body(example: Example) -> dict[str, Any]:
    """The request an example stands for, as the router receives it (what `request_text` reads)."""
    if example.messages is not None:
        return {"messages": list(example.messages)}
    return {"prompt": example.prompt} if example.prompt is not None else {"input": example.input}


def prompt_texts(examples: Sequence[Example]) -> tuple[str, ...]:
    return tuple(request_text(request_body(example)) for example in examples)


def split_fit_and_choice(keys: Sequence[str], fit_share: float = 0.5) -> tuple[list[int], list[int]]:
    """Indices of the part the score is fitted on and of the part skipBelow is chosen on, by a stable hash of each key."""
    fit = [i for i, key in enumerate(keys) if stable_fraction("pre-route:" + key) < fit_share]
    chosen = set(fit)
    return fit, [i for i in range(len(keys)) if i not in chosen]


def fit_weights(
    data: KeptPrompts, *, dimensions: int = DEFAULT_DIMENSIONS, regularization: float = REGULARIZATION
) -> tuple[list[float], float]:
    """The logistic model's weights (one per bucket) and bias; one class only gives a constant at its rate."""
    import numpy as np
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression

    if not data.texts:
        raise ValueError("a pre-route score needs at least one prompt to be fitted on")
    rows, columns, values = [], [], []
    for row, text in enumerate(data.texts):
        for bucket, value in hashed_features(text, dimensions).items():
            rows.append(row)
            columns.append(bucket)
            values.append(value)
    features = csr_matrix((values, (rows, columns)), shape=(len(data.texts), dimensions), dtype=np.float64)
    labels = np.array(data.kept, dtype=bool)
    if labels.all() or not labels.any():
        rate = min(max(float(labels.mean()), 1e-6), 1 - 1e-6)
        return [0.0] * dimensions, math.log(rate / (1 - rate))
    model = LogisticRegression(C=regularization, max_iter=5000).fit(features, labels)
    return [float(w) for w in model.coef_[0]], float(model.intercept_[0])


def keep_probabilities(pre_route: PreRoute, texts: Sequence[str]) -> list[float]:
    """The router's keep-probability of each prompt under `pre_route` (its stored float32 weights)."""
    weights = pre_route.weight_values()
    return [keep_probability(hashed_features(text, pre_route.dimensions), weights, pre_route.bias) for text in texts]


def kept_auroc(probabilities: Sequence[float], kept: Sequence[bool]) -> float | None:
    """How well the probabilities rank kept prompts above declined ones (None with one class only)."""
    return curves.auroc([curves.Judged(p, k, None, None, 0.0, 0.0) for p, k in zip(probabilities, kept, strict=True)])


@dataclass(frozen=True)
class HeldOutSkips:
    """What skipBelow does on prompts neither fitted on nor chosen on."""

    requests: int
    kept: int
    skipped: int
    kept_skipped: int
    auroc: float | None


@dataclass(frozen=True)
class FittedPreRoute:
    pre_route: PreRoute  # skipBelow 0 (never skip) when `choice` certified none
    choice: SkipChoice
    held_out: HeldOutSkips | None


def fit_pre_route(
    fit: KeptPrompts,
    choose: KeptPrompts,
    held_out: KeptPrompts | None = None,
    *,
    dimensions: int = DEFAULT_DIMENSIONS,
    max_kept_skipped: float = _DEFAULTS["max_kept_skipped"].default,
    probe_rate: float = _DEFAULTS["probe_rate"].default,
    confidence: float = 0.95,
    source: str | None = None,
    regularization: float = REGULARIZATION,
) -> FittedPreRoute:
    """Fit the score on `fit`, choose skipBelow on `choose`, measure on `held_out` (when given).

    The fitted record's AUROC is the held-out part's, else the choice part's
    (neither was fitted on)."""
    weights, bias = fit_weights(fit, dimensions=dimensions, regularization=regularization)
    unchosen = PreRoute(
        dimensions=dimensions,
        weights=PreRoute.encode_weights(weights),
        bias=bias,
        skip_below=0.0,
        max_kept_skipped=max_kept_skipped,
        probe_rate=probe_rate,
    )
    chosen_on = keep_probabilities(unchosen, choose.texts)
    choice = choose_skip_below(chosen_on, choose.kept, max_kept_skipped=max_kept_skipped, confidence=confidence)
    measured = _held_out(unchosen, held_out, choice.skip_below) if held_out is not None and held_out.texts else None
    auroc = measured.auroc if measured is not None else kept_auroc(chosen_on, choose.kept)
    record = PreRouteFit(
        examples=len(fit.texts),
        held_out_auroc=None if auroc is None else round(auroc, 4),
        kept_skipped_bound=round(choice.bound, 4) if choice.certified else None,
        source=source,
    )
    fields: Mapping[str, Any] = unchosen.model_dump(exclude={"skip_below", "fitted"})
    return FittedPreRoute(PreRoute(**fields, skip_below=choice.skip_below, fitted=record), choice, measured)


def _held_out(pre_route: PreRoute, data: KeptPrompts, skip_below: float) -> HeldOutSkips:
    probabilities = keep_probabilities(pre_route, data.texts)
    below = [p < skip_below for p in probabilities]
    return HeldOutSkips(
        requests=len(data.texts),
        kept=sum(data.kept),
        skipped=sum(below),
        kept_skipped=sum(b and k for b, k in zip(below, data.kept, strict=True)),
        auroc=kept_auroc(probabilities, data.kept),
    )


@dataclass(frozen=True)
class PreRouteOptions:
    """What `kascade calibrate --pre-route` is asked to fit (None: the PreRoute's defaults)."""

    dimensions: int | None = None
    max_kept_skipped: float | None = None
    probe_rate: float | None = None

    def fit(
        self, fit: KeptPrompts, choose: KeptPrompts, held_out: KeptPrompts | None, *, confidence: float, source: str
    ) -> FittedPreRoute:
        given: dict[str, Any] = {
            "dimensions": self.dimensions,
            "max_kept_skipped": self.max_kept_skipped,
            "probe_rate": self.probe_rate,
        }
        chosen = {name: value for name, value in given.items() if value is not None}
        return fit_pre_route(fit, choose, held_out, confidence=confidence, source=source, **chosen)
