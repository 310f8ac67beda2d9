"""Redaction before anything is kept: the cascade's own patterns plus built-in ones. Pure.

Built in, always on: e-mail addresses, phone numbers (by their shape: an
international number with a leading + and separated groups, or 3-3-4 digits
with separators; bare numbers are left alone), and API-key-like strings (OpenAI, Anthropic,
AWS, GitHub, Slack and Google keys, bearer tokens, long hex or base64
secrets). What matches becomes `[REDACTED]`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

REDACTED = "[REDACTED]"

BUILT_IN_PATTERNS: tuple[str, ...] = (
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",  # e-mail
    # Phone numbers, by their shape: a leading + and three or more separated groups (+44 20 7946 0958), or
    # 3-3-4 digits with separators ((555) 123-4567). Bare digit runs and decimals are numbers, not phones:
    # mathematics, prices and ids must pass untouched.
    r"(?<![\w+])\+\d{1,3}(?:[\s.-]\(?\d{1,4}\)?){2,5}(?!\w)",
    r"(?<![\w.])\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?![\w.])",
    r"\b(?:sk|pk|rk)-(?:[A-Za-z0-9_-]+-)?[A-Za-z0-9_-]{16,}",  # OpenAI / Anthropic / Stripe style keys
    r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",  # AWS access key ids
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",  # GitHub tokens
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}",  # Slack tokens
    r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google API keys
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}=*",  # bearer tokens
    r"\b[0-9a-fA-F]{32,}\b",  # long hex secrets
    r"\b(?=[A-Za-z0-9+/]*\d)(?=[A-Za-z0-9+/]*[A-Z])(?=[A-Za-z0-9+/]*[a-z])[A-Za-z0-9+/]{40,}={0,2}",  # base64 secrets
)


@dataclass(frozen=True)
class Redactor:
    """Removes what its patterns match from text; `redact` says whether anything was removed."""

    patterns: tuple[re.Pattern[str], ...]

    @classmethod
    def with_built_ins(cls, extra: Sequence[str] = ()) -> Redactor:
        return cls(tuple(re.compile(pattern) for pattern in (*extra, *BUILT_IN_PATTERNS)))

    def redact(self, text: str) -> tuple[str, bool]:
        changed = False
        for pattern in self.patterns:
            text, count = pattern.subn(REDACTED, text)
            changed = changed or count > 0
        return text, changed

    def redact_all(self, texts: Iterable[str]) -> tuple[list[str], bool]:
        results = [self.redact(text) for text in texts]
        return [text for text, _ in results], any(changed for _, changed in results)

    def redact_json(self, value: Any) -> tuple[Any, bool]:
        """Every string in a JSON value (keys kept), redacted; a request body keeps its shape."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, list):
            items, changed = zip(*(self.redact_json(item) for item in value), strict=True) if value else ((), ())
            return list(items), any(changed)
        if isinstance(value, dict):
            redacted = {key: self.redact_json(item) for key, item in value.items()}
            return {key: item for key, (item, _) in redacted.items()}, any(c for _, c in redacted.values())
        return value, False
