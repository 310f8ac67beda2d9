"""The pre-route score (`tiers[].preRoute`): from the prompt alone, the probability that the tier keeps it. Pure.

Features (`hashedNgrams`), computed from `prompt_text` of the request
(`kascade.calibration.prompt_text`), lower-cased: word unigrams and bigrams, and
character 4-grams of the text's last `CHAR_WINDOW` characters, each hashed
with CRC-32 of its UTF-8 bytes (a word gram prefixed "w:", a character gram
"c:") into `dimensions` buckets; each bucket holds its count divided by the
square root of the number of grams. The probability is the logistic function of
`bias` plus the weights' dot product with the buckets.

The same function computes the features `kascade calibrate` and a
distillation run fit on (`hashed_features`), so a fitted model reads in
production exactly what it was fitted on. A router builds one `PreRouteScorer`
per tier when its configuration loads.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Mapping
from typing import Any

from kascade.api.pre_route import PreRoute
from kascade.calibration.prompt_text import request_text

CHAR_WINDOW = 1024
CHAR_GRAM = 4
DEFAULT_DIMENSIONS = 4096  # what a fit uses unless told: 16 KiB of weights (about 22 KB of base64 in the manifest)
_WORD = re.compile(r"\w+|[^\w\s]")


def hashed_features(text: str, dimensions: int) -> dict[int, float]:
    """The non-zero buckets of `text`'s hashed n-grams (see the module's docstring)."""
    lowered = text.lower()
    words = _WORD.findall(lowered)
    grams = [f"w:{word}" for word in words]
    grams += [f"w:{left} {right}" for left, right in zip(words, words[1:], strict=False)]
    window = lowered[-CHAR_WINDOW:]
    grams += [f"c:{window[i : i + CHAR_GRAM]}" for i in range(len(window) - CHAR_GRAM + 1)]
    if not grams:
        return {}
    scale = 1.0 / math.sqrt(len(grams))
    counts = Counter(zlib.crc32(gram.encode("utf-8")) % dimensions for gram in grams)
    return {bucket: count * scale for bucket, count in counts.items()}


def keep_probability(features: Mapping[int, float], weights: tuple[float, ...], bias: float) -> float:
    """The logistic model's probability for these features."""
    z = bias + sum(weights[bucket] * value for bucket, value in features.items())
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


class PreRouteScorer:
    """One tier's pre-route model, decoded once: `skips(body)` says whether the tier is passed over."""

    def __init__(self, pre_route: PreRoute) -> None:
        self.pre_route = pre_route
        self._weights = pre_route.weight_values()

    def probability(self, body: Mapping[str, Any]) -> float:
        """The predicted probability that the tier keeps this request."""
        return keep_probability(
            hashed_features(request_text(body), self.pre_route.dimensions), self._weights, self.pre_route.bias
        )

    def skips(self, probability: float) -> bool:
        return probability < self.pre_route.skip_below
