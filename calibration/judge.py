"""The LLM judge of `matcher: judge`: the question it is asked, and its verdict read as a probability. Pure.

One definition for every place that judges with it: the router's online
calibration and the escalation log's `agreed`, the promotion gate, and
`kascade eval`/`calibrate`. The judge (by default the cascade's last tier) is
asked, as a chat, whether the candidate answer is as correct and complete as the
reference answer for the request, and answers one token. Its verdict is the
probability of "yes" among yes and no in the top logprobs of that token
(`verdict`): a reading that needs no generation and no parsing of free text.
A first token with neither word among its alternatives is no verdict (None):
the caller counts it as a judge failure and loses the sample, never guesses.

The request, the reference and the candidate are each cut to `MAX_PART_CHARS`,
so that a judge call's cost is bounded whatever the traffic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MAX_PART_CHARS = 6000
TOP_LOGPROBS = 10  # alternatives asked for the verdict token
SYSTEM_PROMPT = (
    "You are a strict grader. You compare a candidate answer with a reference answer to the same request "
    "and reply with one word: yes or no."
)
QUESTION = (
    "Request:\n{request}\n\nReference answer:\n{reference}\n\nCandidate answer:\n{candidate}\n\n"
    "Is the candidate answer as correct and complete as the reference answer for this request? "
    "Reply with one word: yes or no."
)
_YES = frozenset({"yes", "y"})
_NO = frozenset({"no", "n"})


def _cut(text: str) -> str:
    return text if len(text) <= MAX_PART_CHARS else text[:MAX_PART_CHARS] + " …"


def judge_messages(request: str, candidate: str, reference: str) -> list[dict[str, str]]:
    """The chat the judge is asked."""
    question = QUESTION.format(request=_cut(request), reference=_cut(reference), candidate=_cut(candidate))
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]


def judge_body(model: str, request: str, candidate: str, reference: str) -> dict[str, Any]:
    """The whole chat-completions request body of one judge call: one token, greedy, with its top logprobs."""
    return {
        "model": model,
        "messages": judge_messages(request, candidate, reference),
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": TOP_LOGPROBS,
    }


def verdict(alternatives: Mapping[str, float]) -> float | None:
    """P(yes | yes or no) from the first token's alternatives (token text -> logprob); None: neither is there.

    Tokens are compared stripped and lower-cased, so " Yes" and "yes" count alike and add up.
    """
    yes = no = 0.0
    for token, logprob in alternatives.items():
        if not math.isfinite(logprob):
            continue
        word = token.strip().lower()
        if word in _YES:
            yes += math.exp(logprob)
        elif word in _NO:
            no += math.exp(logprob)
    if yes + no <= 0.0:
        return None
    return yes / (yes + no)
