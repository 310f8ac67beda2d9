"""A teacher server's scores are refused when its ids spell other tokens than the student's."""

from __future__ import annotations

import pytest

from kascade.distillation.examples import DistillDataError
from kascade.distillation.teacher_server import TeacherServer


class _Tokenizer:
    def decode(self, ids: list[int]) -> str:
        return {7: " cat"}.get(ids[0], "?")


def test_a_token_the_server_spells_otherwise_stops_the_run_with_both_spellings() -> None:
    server = TeacherServer("http://127.0.0.1:9/v1", "teacher", top_k=2, student_tokenizer=_Tokenizer())
    server._check_spelling(7, {"logprob": -0.1, "decoded_token": " cat"})
    with pytest.raises(DistillDataError, match=r"token 7 is ' dog' there and ' cat' here"):
        server._check_spelling(7, {"logprob": -0.1, "decoded_token": " dog"})
    with pytest.raises(DistillDataError, match="did not score token 7"):
        server._check_spelling(7, None)
    server.close()
