"""Redaction: what the built-in patterns remove, what they leave, and the cascade's own patterns."""

from __future__ import annotations

import pytest

from kascade.runtime.escalation.redaction import REDACTED, Redactor

BUILT_IN = Redactor.with_built_ins()


@pytest.mark.parametrize(
    "secret",
    [
        "ada.lovelace+work@example.co.uk",
        "+44 20 7946 0958",
        "+1 415-555-2671",
        "(555) 123-4567",
        "555.123.4567",
        "sk-proj-abcdefghijklmnopqrstuvwx1234",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
        "xoxb-1234567890-abcdefghij",
        "AIzaSyA1234567890abcdefghijklmnopqrstuv",
        "Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ],
)
def test_built_in_patterns_remove_contacts_and_keys(secret: str) -> None:
    text, changed = BUILT_IN.redact(f"here it is: {secret} thanks")
    assert changed and REDACTED in text
    assert secret not in text


@pytest.mark.parametrize(
    "plain",
    [
        "What is 2556 + 2?",
        "Call the function add(3, 4) and return 7.",
        "The year 2024 was warm.",
        "def add(a, b):\n    return a + b",
        "Version 1.2.3 of the API",
        "See section 4.2 on page 17.",
        "What is 0.3 + -24.5551?",
        "Add -757.21 and 287921.",
        "-268132",
        "1234567890",
        "0.1703 + 2.4555 = 2.6258",
        "Calculate 2556 + 2.",
        "order 12345678 shipped",
        "pi is 3.14159265358979",
    ],
)
def test_ordinary_text_and_numbers_are_left_alone(plain: str) -> None:
    assert BUILT_IN.redact(plain) == (plain, False)


def test_the_cascades_own_patterns_come_first_and_json_keeps_its_shape() -> None:
    redactor = Redactor.with_built_ins([r"ACME-\d{6}"])
    body = {"messages": [{"role": "user", "content": "ticket ACME-123456 from bob@example.org"}], "max_tokens": 5}
    redacted, changed = redactor.redact_json(body)
    assert changed and redacted["max_tokens"] == 5 and redacted["messages"][0]["role"] == "user"
    assert redacted["messages"][0]["content"] == f"ticket {REDACTED} from {REDACTED}"
    assert redactor.redact_json({"prompt": "nothing here"}) == ({"prompt": "nothing here"}, False)


def test_a_pattern_that_does_not_compile_is_refused_by_the_spec_with_its_place() -> None:
    from kascade.api.loop import EscalationLog

    with pytest.raises(ValueError, match=r"redact\[1\] '\(unclosed' is not a regular expression"):
        EscalationLog.model_validate({"enabled": True, "uri": "/tmp/x", "redact": ["ok", "(unclosed"]})
