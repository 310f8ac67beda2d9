"""What a caller asked, as one text: what the judge reads as the request and the pre-route score reads. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def request_text(body: Mapping[str, Any]) -> str:
    """What the caller asked, as text: a chat's messages as `role: content` lines, a completion's prompt, or a
    classification's input."""
    messages = body.get("messages")
    if isinstance(messages, Sequence) and not isinstance(messages, str):
        lines = []
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            content = message.get("content")
            if isinstance(content, Sequence) and not isinstance(content, str):  # content parts: keep the text ones
                content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
            lines.append(f"{message.get('role', 'user')}: {content if content is not None else ''}")
        return "\n".join(lines)
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, list):
        return "\n".join(str(part) for part in prompt)
    return "" if prompt is None else str(prompt)
