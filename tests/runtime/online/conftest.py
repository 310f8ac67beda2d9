"""A fixed-answer tier that is also a judge: it answers the callers' requests with its fixed answer, and the judge's
question (`kascade.calibration.judge`) with one token whose top logprobs say what the test wants."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.responses import JSONResponse

from kascade.calibration.judge import SYSTEM_PROMPT
from kascade.runtime.engines import vllm_layout as layout
from kascade.runtime.serving import BackgroundServer
from kascade.testing.fixed_upstream import FixedBehaviour, create_fixed_upstream_app


@dataclass
class JudgeBehaviour:
    """How the judge answers: `alternatives` (token -> probability) of its one token; None: no logprobs at all."""

    alternatives: Mapping[str, float] | None = field(default_factory=lambda: {"yes": 0.9, "no": 0.1})
    delay_seconds: float = 0.0
    fail_status: int | None = None
    prompt_tokens: int = 100
    questions: list[dict[str, Any]] = field(default_factory=list)  # every judge request body, in order

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        alternatives = dict(self.alternatives or {"yes": 1.0})
        token = max(alternatives, key=alternatives.__getitem__)
        top = tuple((name, math.log(probability)) for name, probability in alternatives.items())
        logprobs = layout.chat_logprobs([layout.TokenLogprobs(token, math.log(alternatives[token]), top)])
        return layout.chat_completion(
            layout.ResponseHeader("chatcmpl-judge", 0, str(body.get("model"))),
            token,
            logprobs=logprobs if self.alternatives is not None else None,
            finish_reason="length",
            stop_reason=None,
            token_usage=layout.usage(self.prompt_tokens, 1),
        )


def is_judge_question(body: Mapping[str, Any]) -> bool:
    messages = body.get("messages")
    return isinstance(messages, list) and bool(messages) and messages[0].get("content") == SYSTEM_PROMPT


def judging_app(answers: FixedBehaviour, judge: JudgeBehaviour) -> Any:
    """The fixed-answer app, with the judge's questions answered by `judge` instead."""
    fixed = create_fixed_upstream_app(answers)

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await fixed(scope, receive, send)
        parts, more = [], True
        while more:
            message = await receive()
            parts.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(parts)
        body = json.loads(raw)
        if is_judge_question(body):
            judge.questions.append(body)
            await asyncio.sleep(judge.delay_seconds)
            if judge.fail_status is not None:
                response = JSONResponse({"error": {"message": "judge down"}}, status_code=judge.fail_status)
            else:
                response = JSONResponse(judge.answer(body))
            return await response(scope, receive, send)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        return await fixed(scope, replay, send)

    return app


class JudgingUpstream:
    def __init__(self, answers: FixedBehaviour, judge: JudgeBehaviour, server: BackgroundServer) -> None:
        self.behaviour = answers
        self.judge = judge
        self.server = server

    @property
    def url(self) -> str:
        return f"{self.server.url}/v1"


@pytest.fixture
def start_judging_upstream(servers: ExitStack) -> Callable[..., JudgingUpstream]:
    """`start_judging_upstream(judge={JudgeBehaviour fields}, **FixedBehaviour fields)`."""

    def start(*, judge: Mapping[str, Any] | None = None, **answers: Any) -> JudgingUpstream:
        fixed, verdicts = FixedBehaviour(**answers), JudgeBehaviour(**(judge or {}))
        server = servers.enter_context(BackgroundServer(judging_app(fixed, verdicts)))
        return JudgingUpstream(fixed, verdicts, server)

    return start
