"""From generated token ids to the text a client sees: detokenising piece by piece, stop strings, finish reasons.

Pure: a tokenizer's `decode` comes in as a function, no model, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from kascade.runtime.engines.vllm_layout import TokenLogprobs

Decode = Callable[[list[int]], str]


@dataclass(frozen=True)
class TokenStep:
    """One generated token, as the worker thread hands it to the event loop."""

    token_id: int
    token: str  # the token's own text, special tokens included (for logprobs)
    logprobs: TokenLogprobs | None  # raw model logprobs of this position; None when not requested
    text: str  # output text released by this step ("" while held back)
    finish_reason: str | None = None  # "stop" | "length" on the last step
    stop_reason: str | None = None  # the stop string that ended generation


class IncrementalDetokenizer:
    """Text of a growing token sequence, piece by piece, without re-decoding all of it.

    A token can end inside a multi-byte character (byte-level BPE) or change how
    the previous one renders (SentencePiece spaces), so each step decodes a short
    window and holds text back while it ends in U+FFFD (the same scheme as
    vLLM's and TGI's detokenizers).
    """

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True) if self._read_offset < len(self._ids) else ""

    def _advance(self, *, final: bool) -> str:
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return new_text[len(prefix_text) :]
        return ""


class StopStringMatcher:
    """Cuts the output at the first stop string, which is not part of the output (vLLM's default).

    Text that could still turn out to be the start of a stop string is held
    back, so a streamed answer never shows a stop string it later retracts.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.released = 0
        self.matched: str | None = None

    def push(self, delta: str) -> str:
        """Add new output text; return what may be shown now."""
        if self.matched is not None or not delta:
            return ""
        search_from = max(0, len(self.text) - self.holdback)
        self.text += delta
        hits = [(i, s) for s in self.stops if (i := self.text.find(s, search_from)) >= 0]
        if hits:
            cut, self.matched = min(hits)
            self.text = self.text[:cut]
            return self.flush()
        return self._release(len(self.text) - self.holdback)

    def flush(self) -> str:
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        if end <= self.released:
            return ""
        piece, self.released = self.text[self.released : end], end
        return piece


class OutputText:
    """The text one generation shows, token by token, and why it ended.

    A stop token (EOS) ends the output without showing it; the last allowed
    token ends it with "length"; a stop string ends it with "stop" and is cut.
    """

    def __init__(self, decode: Decode, stops: Sequence[str], stop_token_ids: Collection[int]) -> None:
        self._detokenizer = IncrementalDetokenizer(decode)
        self._stops = StopStringMatcher(stops)
        self._stop_token_ids = stop_token_ids

    @property
    def stop_reason(self) -> str | None:
        """The stop string that ended the output, if one did."""
        return self._stops.matched

    def push(self, token_id: int, *, last: bool) -> tuple[str, str | None]:
        """Add one token (`last`: no more may follow); returns the text released now and the finish reason."""
        is_stop_token = token_id in self._stop_token_ids
        ending = is_stop_token or last
        delta = "" if is_stop_token else self._detokenizer.push(token_id)
        if ending:
            delta += self._detokenizer.flush()
        text = self._stops.push(delta)
        finish: str | None = None
        if self._stops.matched is not None:
            finish = "stop"
        elif ending:
            finish = "stop" if is_stop_token else "length"
        if finish is not None:
            text += self._stops.flush()
        return text, finish


class TokenTexts:
    """Each token id's own text (special tokens included), decoded once: logprobs name every top token."""

    def __init__(self, decode_one: Callable[[int], str]) -> None:
        self._decode_one = decode_one
        self._texts: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self._decode_one(token_id)
        return text
