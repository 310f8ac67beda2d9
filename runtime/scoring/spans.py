"""Which generated tokens a score reads (`accept.span`): the whole answer, the last code block, the last line, or
what was not copied from the prompt.

Pure. Spans are found in the concatenation of the tokens' own texts, so a
token belongs to a span by where its characters lie: a token is in when the
middle of its text is. A chat answer often repeats the prompt (a function's
signature and docstring, the question restated) with a confidence that says
nothing about the answer; scoring only what the model wrote itself is what
separates good answers from bad ones there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kascade.api.modelcascade import ScoredSpan
from kascade.runtime.logprobs import TokenEvidence

# A run of at least this many characters that also occurs in the prompt counts as copied:
# long enough that ordinary words and code idioms ("return ", "    if ") do not count.
COPY_MIN_CHARS = 24
_FENCE = re.compile(r"^[ \t]*```", re.MULTILINE)


def _token_starts(tokens: Sequence[TokenEvidence]) -> tuple[str, list[int]]:
    starts, position = [], 0
    for token in tokens:
        starts.append(position)
        position += len(token.text)
    return "".join(token.text for token in tokens), starts


def _tokens_within(tokens: Sequence[TokenEvidence], starts: list[int], keep: Sequence[bool]) -> list[TokenEvidence]:
    """The tokens whose text's middle character is kept (a token without text counts as kept by the one before)."""
    chosen = []
    for token, start in zip(tokens, starts, strict=True):
        middle = start + max(len(token.text) - 1, 0) // 2
        if middle < len(keep) and keep[middle]:
            chosen.append(token)
    return chosen


def final_code_block(text: str) -> tuple[int, int] | None:
    """The character range of the last fenced code block's content (an unclosed last block runs to the end).

    Fences (lines starting with ```) pair up in order: open, close, open, close...
    """
    blocks: list[tuple[int, int]] = []
    opened_at: int | None = None
    for fence in _FENCE.finditer(text):
        if opened_at is None:
            line_end = text.find("\n", fence.start())
            opened_at = len(text) if line_end == -1 else line_end + 1
        else:
            blocks.append((opened_at, fence.start()))
            opened_at = None
    if opened_at is not None and opened_at < len(text):
        blocks.append((opened_at, len(text)))
    return blocks[-1] if blocks else None


def final_line(text: str) -> tuple[int, int] | None:
    """The character range of the last line holding anything but whitespace."""
    end = len(text.rstrip())
    if end == 0:
        return None
    start = text.rfind("\n", 0, end) + 1
    return start, end


def copied_from(text: str, prompt: str, min_chars: int = COPY_MIN_CHARS) -> list[bool]:
    """For each character of `text`, whether it lies in a run of >= `min_chars` characters also found in `prompt`."""
    copied = [False] * len(text)
    if len(text) < min_chars or len(prompt) < min_chars:
        return copied
    seen = {prompt[i : i + min_chars] for i in range(len(prompt) - min_chars + 1)}
    for i in range(len(text) - min_chars + 1):
        if text[i : i + min_chars] in seen:
            copied[i : i + min_chars] = [True] * min_chars
    return copied


def select_span(tokens: Sequence[TokenEvidence], span: ScoredSpan, prompt: str = "") -> list[TokenEvidence]:
    """The tokens `span` selects; an empty list when the answer has no such span (no code block, say)."""
    if span is ScoredSpan.all or not tokens:
        return list(tokens)
    text, starts = _token_starts(tokens)
    if span is ScoredSpan.not_copied:
        copied = copied_from(text, prompt)
        return _tokens_within(tokens, starts, [not c for c in copied])
    found = final_code_block(text) if span is ScoredSpan.final_code_block else final_line(text)
    if found is None:
        return []
    start, end = found
    inside = [start <= index < end for index in range(len(text))]
    return _tokens_within(tokens, starts, inside)


def prompt_text(body: object) -> str:
    """The text of a request's prompt: chat messages' contents joined, or the completion prompt."""
    if not isinstance(body, dict):
        return ""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):  # content parts: keep the text ones
                parts.extend(
                    p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
        return "\n".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    return ""
