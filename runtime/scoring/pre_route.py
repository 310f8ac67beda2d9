"""The pre-route score (`tiers[].preRoute`): from the prompt alone, the probability that the tier keeps it. Pure.

Features (`hashedNgrams`), computed from `request_text` of the request
(`kascade.calibration.prompt_text`), lower-cased: word unigrams and bigrams of
the text's last `WORD_WINDOW` characters, and byte 4-grams of the UTF-8 of its
last `CHAR_WINDOW` characters (the end of a prompt is where its question is),
each hashed with CRC-32 (seeded with "w:" for a word gram, "c:" for a byte
gram; a bigram is its two words joined by a space) into `dimensions` buckets;
each bucket holds its count divided by the square root of the number of grams.
The windows bound the cost per request whatever the prompt's length. The
probability is the logistic function of `bias` plus the weights' dot product
with the buckets.

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

WORD_WINDOW = 1024
CHAR_WINDOW = 512
CHAR_GRAM = 4
DEFAULT_DIMENSIONS = 4096  # what a fit uses unless told: 16 KiB of weights (about 22 KB of base64 in the manifest)
_WORD = re.compile(r"\w+|[^\w\s]")
_WORD_SEED = zlib.crc32(b"w:")
_CHAR_SEED = zlib.crc32(b"c:")


def hashed_features(text: str, dimensions: int) -> dict[int, float]:
    """The non-zero buckets of `text`'s hashed n-grams (see the module's docstring)."""
    crc32 = zlib.crc32
    words = [word.encode("utf-8") for word in _WORD.findall(text[-WORD_WINDOW:].lower())]
    buckets = [crc32(word, _WORD_SEED) % dimensions for word in words]
    buckets += [
        crc32(b" " + right, crc32(left, _WORD_SEED)) % dimensions for left, right in zip(words, words[1:], strict=False)
    ]
    tail = text[-CHAR_WINDOW:].lower().encode("utf-8")
    buckets += [crc32(tail[i : i + CHAR_GRAM], _CHAR_SEED) % dimensions for i in range(len(tail) - CHAR_GRAM + 1)]
    if not buckets:
        return {}
    scale = 1.0 / math.sqrt(len(buckets))
    return {bucket: count * scale for bucket, count in Counter(buckets).items()}


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
