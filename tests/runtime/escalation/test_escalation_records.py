"""What the escalation log keeps of an answer, read with the scores' own logprobs parser: text, teacher tokens."""

from __future__ import annotations

from typing import Any

import pytest

from kascade.api.escalation_record import tail_mass
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.escalation.records import answer_of, teacher_tokens


def _chat_entry(token: str, logprob: float, top: list[tuple[str, float]]) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}


def _chat_response(content: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    choice = {"index": 0, "message": message, "logprobs": {"content": entries}, "finish_reason": "stop"}
    return {"choices": [choice]}


def test_a_chat_answer_named_by_token_id_gives_its_teacher_tokens() -> None:
    entries = [
        _chat_entry("token_id:7", -0.1, [("token_id:7", -0.1), ("token_id:9", -2.5)]),
        _chat_entry("token_id:3", -0.4, [("token_id:3", -0.4), ("token_id:1", -1.2)]),
    ]
    answer = answer_of(Endpoint.chat, _chat_response("Paris", entries))
    assert (answer.text, answer.finish_reason) == ("Paris", "stop")
    tokens = teacher_tokens(answer.evidence)
    assert tokens is not None
    assert tokens.token_ids == [7, 3] and tokens.top_ids == [[7, 9], [3, 1]]
    assert tokens.top_logprobs == [[-0.1, -2.5], [-0.4, -1.2]]
    assert tokens.tail_mass == pytest.approx([tail_mass([-0.1, -2.5]), tail_mass([-0.4, -1.2])])


def test_a_completion_answer_keeps_its_top_entries_by_id() -> None:
    logprobs = {
        "tokens": ["token_id:5", "token_id:6"],
        "token_logprobs": [-0.2, -0.3],
        "top_logprobs": [{"token_id:5": -0.2, "token_id:8": -1.9}, {"token_id:6": -0.3}],
    }
    response = {"choices": [{"index": 0, "text": "ab", "logprobs": logprobs, "finish_reason": "length"}]}
    answer = answer_of(Endpoint.completion, response)
    tokens = teacher_tokens(answer.evidence)
    assert answer.text == "ab" and answer.finish_reason == "length"
    assert tokens is not None and tokens.token_ids == [5, 6] and tokens.top_ids == [[5, 8], [6]]


def test_a_stream_is_joined_and_its_tokens_kept_in_order() -> None:
    def chunk(text: str, token_id: int, finish: str | None) -> dict[str, Any]:
        name = f"token_id:{token_id}"
        choice = {
            "index": 0,
            "delta": {"content": text},
            "logprobs": {"content": [_chat_entry(name, -0.5, [(name, -0.5)])]},
            "finish_reason": finish,
        }
        return {"choices": [choice]}

    chunks = [chunk("Pa", 1, None), chunk("ris", 2, "stop"), {"choices": [], "usage": {"completion_tokens": 2}}]
    answer = answer_of(Endpoint.chat, chunks)
    tokens = teacher_tokens(answer.evidence)
    assert (answer.text, answer.finish_reason) == ("Paris", "stop")
    assert tokens is not None and tokens.token_ids == [1, 2] and tokens.top_ids == [[1], [2]]


def test_tokens_not_named_by_id_give_no_teacher_tokens_but_the_text_is_kept() -> None:
    by_text = [_chat_entry("Par", -0.1, [("Par", -0.1), ("token_id:4", -3.0)])]
    answer = answer_of(Endpoint.chat, _chat_response("Par", by_text))
    assert answer.text == "Par" and teacher_tokens(answer.evidence) is None
    one_top_by_text = [_chat_entry("token_id:2", -0.1, [("token_id:2", -0.1), ("is", -3.0)])]
    assert teacher_tokens(answer_of(Endpoint.chat, _chat_response("x", one_top_by_text)).evidence) is None
    assert teacher_tokens(answer_of(Endpoint.chat, _chat_response("x", [])).evidence) is None


def test_malformed_top_entries_are_left_out_as_the_scores_leave_them_out() -> None:
    entry = {
        "token": "token_id:7",
        "logprob": -0.1,
        "top_logprobs": [{"token": "token_id:7", "logprob": -0.1}, {"token": "token_id:9", "logprob": "bad"}, "x"],
    }
    tokens = teacher_tokens(answer_of(Endpoint.chat, _chat_response("x", [entry])).evidence)
    assert tokens is not None and tokens.top_ids == [[7]] and tokens.top_logprobs == [[-0.1]]


def test_a_classify_answer_keeps_its_label_and_class_probabilities() -> None:
    answer = answer_of(Endpoint.classify, {"data": [{"index": 0, "label": "spam", "probs": [0.8, 0.2]}]})
    assert answer.text == "spam" and answer.class_probs == (0.8, 0.2) and answer.evidence == ()
    assert answer_of(Endpoint.classify, {"data": []}).class_probs is None
