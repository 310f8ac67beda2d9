"""What an evaluation reads and keeps: examples of a dataset, and each tier's answer to one.

Plain pydantic types, the contract between the loaders, the answer cache, the
matchers and the analysis. An answer keeps everything a confidence method or
the learned score may need later (token texts, logprobs, top-k logprobs, token
counts), so a new method or a threshold sweep never generates again.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CodeTests(BaseModel):
    """HumanEval's way of testing an answer: the problem's prompt, its `check(candidate)` and the function's name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    test: str
    entry_point: str


class Example(BaseModel):
    """One request of a dataset: chat `messages`, a completion `prompt`, or a classify `input`, with what it should be."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    messages: tuple[dict[str, str], ...] | None = None
    prompt: str | None = None
    input: str | None = None
    answer: str | None = Field(default=None, description="The reference answer (generative tasks).")
    label: str | None = Field(default=None, description="The reference label (classify).")
    tests: CodeTests | None = None
    slice: str | None = Field(default=None, description="A group to report apart (a module, a source).")

    @model_validator(mode="after")
    def _one_request(self) -> Example:
        given = [name for name in ("messages", "prompt", "input") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"an example needs exactly one of messages, prompt or input (found {given or 'none'})")
        return self


class TierAnswer(BaseModel):
    """One tier's answer to one example, as cached: text and token evidence, or label probabilities."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = ""
    tokens: tuple[str, ...] = ()  # generated token texts, in order (the stop token included, as engines report it)
    logprobs: tuple[float, ...] = ()  # the chosen token's logprob at each position
    top_logprobs: tuple[tuple[float, ...], ...] = ()  # the top-k logprobs at each position
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    label: str | None = None  # classify: the predicted label
    probs: tuple[float, ...] = ()  # classify: every label's probability, in the model's label order
