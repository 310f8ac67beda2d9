"""JSON on the router's hot path: what `decode_json`, `encode_json` and `JsonResponse` accept and write."""

from __future__ import annotations

import json
import math

import pytest

from kascade.runtime.wire import JsonResponse, decode_json, encode_json

ANSWER = {"id": "x", "choices": [{"message": {"content": "Grüße, 世界 \u2028"}, "logprobs": None}], "n": 3}


def test_an_answer_round_trips_as_the_standard_library_reads_it():
    encoded = encode_json(ANSWER)
    assert decode_json(encoded) == ANSWER == json.loads(encoded)
    # Byte for byte what Starlette's JSONResponse writes: compact, UTF-8 rather than \\u escapes.
    assert encoded == json.dumps(ANSWER, ensure_ascii=False, separators=(",", ":")).encode()


@pytest.mark.parametrize("text", ["{", '{"a": NaN}', '{"a": Infinity}', '"\\ud800"', b"\xff"])
def test_what_is_not_strict_json_is_a_value_error(text: str | bytes):
    with pytest.raises(ValueError):
        decode_json(text)


def test_a_response_body_is_the_encoded_content_with_its_media_type():
    response = JsonResponse(ANSWER, headers={"x-kascade-tier": "small"})
    assert response.body == encode_json(ANSWER)
    assert response.media_type == "application/json"
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-kascade-tier"] == "small"


def test_non_finite_floats_are_written_as_null_not_as_invalid_json():
    assert decode_json(encode_json({"logprob": -math.inf, "p": math.nan})) == {"logprob": None, "p": None}
