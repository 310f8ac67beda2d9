"""Reading, requesting and hiding vLLM/OpenAI logprobs on the wire."""

from __future__ import annotations

import copy
import math

import pytest

from kascade.runtime.engines.base import Endpoint
from kascade.runtime.logprobs import (
    TokenEvidence,
    caller_logprobs_request,
    chunk_token_evidence,
    class_probs,
    strip_unrequested_logprobs,
    token_evidence,
    with_logprobs_requested,
)

LN_HALF = math.log(0.5)
LN_QUARTER = math.log(0.25)


def chat_entry(token: str, logprob: float | None, top: list[tuple[str, float]]) -> dict:
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top],
    }


def chat_response(entries: list[dict]) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "small",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Yes no"},
                "logprobs": {"content": entries},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def completion_response() -> dict:
    # vLLM with echo: the first prompt token has no logprob (None) and no top dict.
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "small",
        "choices": [
            {
                "index": 0,
                "text": "Hi there",
                "logprobs": {
                    "tokens": ["<s>", "Hi", " there"],
                    "token_logprobs": [None, LN_HALF, LN_QUARTER],
                    "top_logprobs": [
                        None,
                        {"Hi": LN_HALF, "Hello": LN_QUARTER, "Hey": math.log(0.125)},
                        {" friend": LN_HALF, " there": LN_QUARTER, " you": math.log(0.125)},
                    ],
                    "text_offset": [0, 0, 2],
                },
                "finish_reason": "stop",
            }
        ],
    }


def test_chat_response_gives_one_evidence_per_token() -> None:
    response = chat_response(
        [
            chat_entry("Yes", LN_HALF, [("Yes", LN_HALF), ("No", LN_QUARTER)]),
            chat_entry(" no", LN_QUARTER, []),
        ]
    )
    assert token_evidence(Endpoint.chat, response) == [
        TokenEvidence(LN_HALF, (LN_HALF, LN_QUARTER), "Yes"),
        TokenEvidence(LN_QUARTER, (), " no"),
    ]


def test_chat_skips_none_and_malformed_entries() -> None:
    entries = [
        chat_entry("a", None, []),  # vLLM can send a null logprob
        "not a dict",
        {"token": "b", "logprob": True},  # a bool is no logprob
        {"token": "c", "logprob": "-0.5"},  # nor is a string
        {"token": "d", "logprob": LN_HALF, "top_logprobs": [None, {"logprob": None}, {"logprob": LN_HALF}, 3]},
        {"token": "e", "logprob": LN_QUARTER, "top_logprobs": "oops"},
        {"token": "f", "logprob": -1},  # ints are numbers
    ]
    assert token_evidence(Endpoint.chat, chat_response(entries)) == [
        TokenEvidence(LN_HALF, (LN_HALF,)),
        TokenEvidence(LN_QUARTER, ()),
        TokenEvidence(-1.0, ()),
    ]


@pytest.mark.parametrize(
    "response",
    [
        {},
        {"choices": []},
        {"choices": None},
        {"choices": "abc"},
        {"choices": [None]},
        {"choices": [{"index": 0}]},
        {"choices": [{"index": 0, "logprobs": None}]},
        {"choices": [{"index": 0, "logprobs": "x"}]},
        {"choices": [{"index": 0, "logprobs": {"content": None}}]},
        {"choices": [{"index": 0, "logprobs": {"content": {"a": 1}}}]},
        {"choices": [{"index": 0, "logprobs": {"token_logprobs": "x"}}]},
        None,
        [],
    ],
)
@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_odd_shapes_give_no_evidence_and_never_raise(endpoint: Endpoint, response: object) -> None:
    assert token_evidence(endpoint, response) == []  # type: ignore[arg-type]
    assert chunk_token_evidence(endpoint, response) == []  # type: ignore[arg-type]


def test_completion_layout_skips_none_and_reads_top_dicts() -> None:
    assert token_evidence(Endpoint.completion, completion_response()) == [
        TokenEvidence(LN_HALF, (LN_HALF, LN_QUARTER, math.log(0.125))),
        TokenEvidence(LN_QUARTER, (LN_HALF, LN_QUARTER, math.log(0.125))),
    ]


def test_completion_without_top_lists_or_with_short_ones() -> None:
    response = {
        "choices": [
            {
                "index": 0,
                "logprobs": {"tokens": ["a", "b"], "token_logprobs": [LN_HALF, LN_QUARTER], "top_logprobs": [None]},
            }
        ]
    }
    assert token_evidence(Endpoint.completion, response) == [TokenEvidence(LN_HALF), TokenEvidence(LN_QUARTER)]
    response["choices"][0]["logprobs"]["top_logprobs"] = None
    assert token_evidence(Endpoint.completion, response) == [TokenEvidence(LN_HALF), TokenEvidence(LN_QUARTER)]


def test_the_endpoint_picks_the_layout() -> None:
    # A chat-shaped body read as a completion (and the reverse) has no evidence where expected.
    assert token_evidence(Endpoint.completion, chat_response([chat_entry("a", LN_HALF, [])])) == []
    assert token_evidence(Endpoint.chat, completion_response()) == []
    assert token_evidence(Endpoint.classify, completion_response()) == []


def test_chat_stream_chunk_carries_the_delta_tokens() -> None:
    chunk = {
        "object": "chat.completion.chunk",
        "choices": [
            {
                "index": 0,
                "delta": {"content": "Yes"},
                "logprobs": {"content": [chat_entry("Yes", LN_HALF, [("Yes", LN_HALF), ("No", LN_QUARTER)])]},
                "finish_reason": None,
            }
        ],
    }
    assert chunk_token_evidence(Endpoint.chat, chunk) == [TokenEvidence(LN_HALF, (LN_HALF, LN_QUARTER))]


def test_completion_stream_chunk() -> None:
    chunk = {
        "object": "text_completion",
        "choices": [
            {
                "index": 0,
                "text": " there",
                "logprobs": {
                    "tokens": [" there"],
                    "token_logprobs": [LN_QUARTER],
                    "top_logprobs": [{" there": LN_QUARTER}],
                    "text_offset": [2],
                },
            }
        ],
    }
    assert chunk_token_evidence(Endpoint.completion, chunk) == [TokenEvidence(LN_QUARTER, (LN_QUARTER,))]


def test_usage_chunk_and_other_choices_give_nothing() -> None:
    assert chunk_token_evidence(Endpoint.chat, {"choices": [], "usage": {"prompt_tokens": 3}}) == []
    # With n > 1 a chunk may carry only choice 1; choice 0 is what is scored.
    other = {"choices": [{"index": 1, "logprobs": {"content": [chat_entry("x", LN_HALF, [])]}}]}
    assert chunk_token_evidence(Endpoint.chat, other) == []
    both = {
        "choices": [
            {"index": 1, "logprobs": {"content": [chat_entry("x", LN_QUARTER, [])]}},
            {"index": 0, "logprobs": {"content": [chat_entry("y", LN_HALF, [])]}},
        ]
    }
    assert chunk_token_evidence(Endpoint.chat, both) == [TokenEvidence(LN_HALF)]


def test_class_probs_of_the_first_input() -> None:
    response = {
        "data": [
            {"index": 0, "label": "positive", "probs": [0.7, 0.2, 0.1], "num_classes": 3},
            {"index": 1, "label": "negative", "probs": [0.1, 0.8, 0.1], "num_classes": 3},
        ]
    }
    assert class_probs(response) == [0.7, 0.2, 0.1]


@pytest.mark.parametrize(
    "response",
    [{}, {"data": []}, {"data": None}, {"data": [None]}, {"data": [{"label": "x"}]}, {"data": [{"probs": "x"}]}, None],
)
def test_class_probs_missing_is_empty(response: object) -> None:
    assert class_probs(response) == []  # type: ignore[arg-type]


def test_class_probs_drops_non_numbers() -> None:
    assert class_probs({"data": [{"probs": [0.5, None, "x", 0.5, True]}]}) == [0.5, 0.5]


def test_chat_request_asks_for_logprobs_without_touching_the_callers_body() -> None:
    body = {"model": "c", "messages": [{"role": "user", "content": "hi"}]}
    original = copy.deepcopy(body)
    request = with_logprobs_requested(Endpoint.chat, body, 5)
    assert request == {**original, "logprobs": True, "top_logprobs": 5}
    assert body == original


@pytest.mark.parametrize(
    ("caller_top", "needed", "expected"), [(3, 5, 5), (7, 5, 7), (None, 0, 0), (2, 2, 2), ("x", 2, 2)]
)
def test_chat_request_keeps_the_larger_top_count(caller_top: object, needed: int, expected: int) -> None:
    body = {"messages": [], "logprobs": True, "top_logprobs": caller_top}
    assert with_logprobs_requested(Endpoint.chat, body, needed)["top_logprobs"] == expected


@pytest.mark.parametrize(
    ("caller", "needed", "expected"), [(None, 0, 0), (None, 5, 5), (3, 5, 5), (8, 5, 8), (0, 0, 0)]
)
def test_completion_request_logprobs_is_a_count(caller: object, needed: int, expected: int) -> None:
    body = {"prompt": "hi"}
    if caller is not None:
        body["logprobs"] = caller
    request = with_logprobs_requested(Endpoint.completion, body, needed)
    assert request["logprobs"] == expected
    assert "top_logprobs" not in request
    assert body.get("logprobs") == caller


def test_classify_body_comes_back_as_a_copy() -> None:
    body = {"model": "c", "input": "great movie"}
    request = with_logprobs_requested(Endpoint.classify, body, 5)
    assert request == body
    assert request is not body


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        (Endpoint.chat, {}, (False, 0)),
        (Endpoint.chat, {"logprobs": False, "top_logprobs": 3}, (False, 3)),
        (Endpoint.chat, {"logprobs": True}, (True, 0)),
        (Endpoint.chat, {"logprobs": True, "top_logprobs": 3}, (True, 3)),
        (Endpoint.chat, {"logprobs": True, "top_logprobs": None}, (True, 0)),
        (Endpoint.completion, {}, (False, 0)),
        (Endpoint.completion, {"logprobs": None}, (False, 0)),
        (Endpoint.completion, {"logprobs": 0}, (True, 0)),
        (Endpoint.completion, {"logprobs": 4}, (True, 4)),
        (Endpoint.classify, {"logprobs": True}, (False, 0)),
    ],
)
def test_caller_logprobs_request(endpoint: Endpoint, body: dict, expected: tuple[bool, int]) -> None:
    assert caller_logprobs_request(endpoint, body) == expected


def two_choice_chat_response() -> dict:
    response = chat_response(
        [
            chat_entry("Yes", LN_HALF, [("Yes", LN_HALF), ("No", LN_QUARTER), ("Maybe", math.log(0.125))]),
            chat_entry(" no", LN_QUARTER, [(" yes", LN_HALF), (" no", LN_QUARTER), (" ok", math.log(0.125))]),
        ]
    )
    response["choices"].append({**copy.deepcopy(response["choices"][0]), "index": 1})
    return response


def test_strip_removes_logprobs_the_caller_did_not_ask_for() -> None:
    response = two_choice_chat_response()
    original = copy.deepcopy(response)
    stripped = strip_unrequested_logprobs(Endpoint.chat, {"messages": []}, response)
    assert [choice["logprobs"] for choice in stripped["choices"]] == [None, None]
    assert stripped["choices"][0]["message"] == original["choices"][0]["message"]
    assert stripped["usage"] == original["usage"]
    assert response == original


def test_strip_trims_chat_top_lists_to_the_callers_count() -> None:
    response = two_choice_chat_response()
    original = copy.deepcopy(response)
    stripped = strip_unrequested_logprobs(Endpoint.chat, {"logprobs": True, "top_logprobs": 1}, response)
    for choice in stripped["choices"]:
        content = choice["logprobs"]["content"]
        assert [[top["token"] for top in entry["top_logprobs"]] for entry in content] == [["Yes"], [" yes"]]
        assert [entry["logprob"] for entry in content] == [LN_HALF, LN_QUARTER]
    assert response == original


def test_strip_keeps_the_highest_chat_entries_even_when_unsorted() -> None:
    entry = chat_entry("b", LN_QUARTER, [("c", math.log(0.125)), ("a", LN_HALF), ("b", LN_QUARTER)])
    stripped = strip_unrequested_logprobs(Endpoint.chat, {"logprobs": True, "top_logprobs": 2}, chat_response([entry]))
    assert [top["token"] for top in stripped["choices"][0]["logprobs"]["content"][0]["top_logprobs"]] == ["a", "b"]


def test_strip_with_logprobs_but_no_top_gives_empty_top_lists() -> None:
    stripped = strip_unrequested_logprobs(Endpoint.chat, {"logprobs": True}, two_choice_chat_response())
    for entry in stripped["choices"][0]["logprobs"]["content"]:
        assert entry["top_logprobs"] == []
        assert "logprob" in entry


def test_strip_completion_keeps_the_n_highest_plus_the_sampled_token() -> None:
    response = completion_response()
    original = copy.deepcopy(response)
    stripped = strip_unrequested_logprobs(Endpoint.completion, {"prompt": "x", "logprobs": 1}, response)
    tops = stripped["choices"][0]["logprobs"]["top_logprobs"]
    # " there" was sampled although " friend" was likelier: vLLM lists both for logprobs=1.
    assert tops == [None, {"Hi": LN_HALF}, {" friend": LN_HALF, " there": LN_QUARTER}]
    assert stripped["choices"][0]["logprobs"]["token_logprobs"] == original["choices"][0]["logprobs"]["token_logprobs"]
    assert response == original


def test_strip_completion_with_zero_keeps_only_the_sampled_token() -> None:
    stripped = strip_unrequested_logprobs(Endpoint.completion, {"logprobs": 0}, completion_response())
    assert stripped["choices"][0]["logprobs"]["top_logprobs"] == [None, {"Hi": LN_HALF}, {" there": LN_QUARTER}]


def test_strip_completion_not_asked() -> None:
    stripped = strip_unrequested_logprobs(Endpoint.completion, {"prompt": "x"}, completion_response())
    assert stripped["choices"][0]["logprobs"] is None
    assert stripped["choices"][0]["text"] == "Hi there"


def test_strip_works_on_stream_chunks_and_odd_shapes() -> None:
    chunk = {
        "choices": [
            {
                "index": 0,
                "delta": {"content": "Yes"},
                "logprobs": {"content": [chat_entry("Yes", LN_HALF, [("Yes", LN_HALF)])]},
            }
        ]
    }
    assert strip_unrequested_logprobs(Endpoint.chat, {}, chunk)["choices"][0]["logprobs"] is None
    usage_chunk = {"choices": [], "usage": {"prompt_tokens": 1}}
    assert strip_unrequested_logprobs(Endpoint.chat, {}, usage_chunk) == usage_chunk
    odd = {"choices": [None, {"index": 0, "logprobs": "x"}]}
    assert strip_unrequested_logprobs(Endpoint.chat, {"logprobs": True, "top_logprobs": 1}, odd) == odd
    assert strip_unrequested_logprobs(Endpoint.chat, {}, {"error": "x"}) == {"error": "x"}


def test_strip_leaves_classify_responses_alone() -> None:
    response = {"data": [{"index": 0, "label": "a", "probs": [0.9, 0.1], "num_classes": 2}]}
    stripped = strip_unrequested_logprobs(Endpoint.classify, {"input": "x"}, response)
    assert stripped == response
    assert stripped is not response


# -- the writer (engines' vllm_layout) and the reader agree ------------------------------------------


def test_what_the_engines_write_is_what_the_router_reads() -> None:
    from kascade.runtime.engines import vllm_layout as layout

    scored = [
        layout.TokenLogprobs("Hi", LN_HALF, (("Hi", LN_HALF), ("Yo", LN_QUARTER))),
        layout.TokenLogprobs("!", -math.inf, ()),  # vLLM clamps -inf so the JSON stays valid
    ]
    header = layout.ResponseHeader("x", 0, "small")
    expected = [TokenEvidence(LN_HALF, (LN_HALF, LN_QUARTER)), TokenEvidence(layout.MIN_LOGPROB, ())]
    for endpoint, build, logprobs in [
        (Endpoint.chat, layout.chat_completion, layout.chat_logprobs(scored)),
        (Endpoint.completion, layout.text_completion, layout.completion_logprobs(scored)),
    ]:
        response = build(
            header, "Hi!", logprobs=logprobs, finish_reason="stop", stop_reason=None, token_usage=layout.usage(3, 2)
        )
        evidence = token_evidence(endpoint, response)
        # Completions list the chosen token among the top ones, so its own logprob shows there too.
        assert [e.logprob for e in evidence] == [e.logprob for e in expected]
        assert evidence[0].top_logprobs == expected[0].top_logprobs
    assert layout.completion_logprobs(scored, 5)["text_offset"] == [5, 7]


def test_the_layouts_classify_response_is_read_back() -> None:
    from kascade.runtime.engines import vllm_layout as layout

    result = layout.class_result(0, [0.25, 0.75], ["negative", "positive"])
    assert result == {"index": 0, "label": "positive", "probs": [0.25, 0.75], "num_classes": 2}
    response = layout.classification(layout.ResponseHeader("c", 0, "clf"), [result], prompt_tokens=4)
    assert class_probs(response) == [0.25, 0.75]
    assert response["usage"] == {"prompt_tokens": 4, "total_tokens": 4, "completion_tokens": 0}
