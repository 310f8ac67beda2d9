"""A teacher behind an OpenAI-compatible server (vLLM, or `kascade serve`): it scores the student's samples.

On-policy steps need the teacher's distribution over tokens the student
wrote. vLLM gives it without generating: a completions request whose prompt
is the token ids of (prompt + sample), `max_tokens` 1 and `prompt_logprobs` k
returns, for every prompt position, the logprob of the token there and of the
k most likely. The server's ids must mean the student's tokens: every scored
token's `decoded_token` is checked against the student's tokenizer, and a
mismatch stops the run with both spellings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import httpx

from kascade.api.escalation_record import TeacherTokens, tail_mass
from kascade.distillation.batches import EncodedLm
from kascade.distillation.examples import DistillDataError


class TeacherServer:
    def __init__(self, url: str, model: str, *, top_k: int, student_tokenizer: Any, timeout: float = 600.0) -> None:
        key = os.environ.get("KASCADE_TEACHER_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=headers)
        self.model = model
        self.top_k = top_k
        self._tokenizer = student_tokenizer

    def close(self) -> None:
        self._client.close()

    def signals(self, encoded: Sequence[EncodedLm]) -> list[TeacherTokens]:
        return [self._signal(e) for e in encoded]

    def _signal(self, encoded: EncodedLm) -> TeacherTokens:
        ids = encoded.prompt + encoded.answer
        body = {"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": self.top_k}
        try:
            response = self._client.post("/completions", json=body)
        except httpx.HTTPError as error:
            raise DistillDataError(f"the teacher server at {self._client.base_url} did not answer: {error}") from None
        if response.status_code != 200:
            raise DistillDataError(
                f"the teacher server refused to score a sample ({response.status_code}): {response.text[:300]}"
            )
        scored = (response.json().get("choices") or [{}])[0].get("prompt_logprobs")
        if not isinstance(scored, list) or len(scored) != len(ids):
            raise DistillDataError("the teacher server gave no prompt_logprobs for every position (vLLM's parameter)")
        top_ids: list[list[int]] = []
        top_logprobs: list[list[float]] = []
        for position in range(len(encoded.prompt), len(ids)):
            entries = {int(token): entry for token, entry in (scored[position] or {}).items()}
            self._check_spelling(ids[position], entries.get(ids[position]))
            best = sorted(entries.items(), key=lambda item: item[1]["logprob"], reverse=True)[: self.top_k]
            top_ids.append([token for token, _ in best])
            top_logprobs.append([float(entry["logprob"]) for _, entry in best])
        tails = [tail_mass(logprobs) for logprobs in top_logprobs]
        return TeacherTokens(
            token_ids=list(encoded.answer), top_ids=top_ids, top_logprobs=top_logprobs, tail_mass=tails
        )

    def _check_spelling(self, token_id: int, entry: dict[str, Any] | None) -> None:
        if entry is None:
            raise DistillDataError(f"the teacher server did not score token {token_id} of the sample")
        theirs = entry.get("decoded_token")
        ours = self._tokenizer.decode([token_id])
        if theirs is not None and theirs != ours:
            raise DistillDataError(
                f"the teacher server's vocabulary is not the student's: token {token_id} is {theirs!r} there and "
                f"{ours!r} here; on-policy distillation needs a shared tokenizer"
            )
