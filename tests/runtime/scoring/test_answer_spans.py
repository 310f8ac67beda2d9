"""Which tokens a score reads: the last code block, the last line, or what the model did not copy."""

from __future__ import annotations

import math

from kascade.api.modelcascade import Accept, ScoredSpan
from kascade.runtime.logprobs import TokenEvidence
from kascade.runtime.scoring.confidence import score_tokens
from kascade.runtime.scoring.spans import copied_from, final_code_block, final_line, prompt_text, select_span


def _tokens(pieces: list[tuple[str, float]]) -> list[TokenEvidence]:
    return [TokenEvidence(math.log(p), (), text) for text, p in pieces]


ANSWER = _tokens(
    [
        ("Here", 0.9),
        (" it is:\n", 0.9),
        ("```python\n", 0.99),
        ("def f(x):\n", 0.99),
        ("    return", 0.3),
        (" x + 1\n", 0.4),
        ("```", 0.99),
        ("\nThe answer is", 0.9),
        (" 42.", 0.2),
    ]
)


def test_final_code_block_keeps_only_the_code() -> None:
    kept = select_span(ANSWER, ScoredSpan.final_code_block)
    assert [t.text for t in kept] == ["def f(x):\n", "    return", " x + 1\n"]
    text = "```py\na\n```\nwords\n```\nb\n```"
    start, end = final_code_block(text)
    assert text[start:end] == "b\n"
    assert final_code_block("no code at all") is None
    unclosed = "```python\nprint(1"
    start, end = final_code_block(unclosed)
    assert unclosed[start:end] == "print(1"


def test_final_line_is_the_last_line_with_text() -> None:
    assert [t.text for t in select_span(ANSWER, ScoredSpan.final_line)] == ["\nThe answer is", " 42."]
    assert final_line("  \n\n") is None


def test_not_copied_drops_what_the_prompt_already_said() -> None:
    prompt = 'def add(a, b):\n    """Return the sum of a and b."""\n'
    tokens = _tokens(
        [
            ("def add(a, b):\n", 0.99),
            ('    """Return the sum', 0.99),
            (' of a and b."""\n', 0.99),
            ("    return", 0.5),
            (" a + b\n", 0.6),
        ]
    )
    kept = select_span(tokens, ScoredSpan.not_copied, prompt)
    assert [t.text for t in kept] == ["    return", " a + b\n"]
    assert not any(copied_from("short", prompt))


def test_an_empty_span_scores_zero_and_a_span_changes_the_score() -> None:
    no_code = _tokens([("just words", 0.99)])
    assert score_tokens(Accept(threshold=0.5, span=ScoredSpan.final_code_block), no_code) == 0.0
    whole = score_tokens(Accept(method="minToken", threshold=0.5), ANSWER)
    code = score_tokens(Accept(method="minToken", threshold=0.5, span=ScoredSpan.final_code_block), ANSWER)
    assert whole == 0.2 and code == 0.3


def test_prompt_text_of_chat_and_completion_bodies() -> None:
    assert (
        prompt_text(
            {
                "messages": [
                    {"role": "system", "content": "a"},
                    {"role": "user", "content": [{"type": "text", "text": "b"}]},
                ]
            }
        )
        == "a\nb"
    )
    assert prompt_text({"prompt": "x"}) == "x"
    assert prompt_text({"prompt": [1, 2]}) == ""
    assert prompt_text(None) == ""
