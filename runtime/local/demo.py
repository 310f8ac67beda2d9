"""Local mode's demo: a few requests through the official openai client, each printed as it comes back."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
from rich.console import Console

from kascade.api.modelcascade import ModelCascade, Task
from kascade.runtime.local.manifest import LocalModeError

# Varied on purpose: some the small model knows cold, some it should hand on.
# The demo manifest's threshold was tuned on these (docs/local-mode.md shows the scores).
DEMO_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Say hello in French.",
    "Write a Python function that returns the square of a number.",
    "Who wrote the novel Pride and Prejudice?",
    "What is the time complexity of binary search?",
    "What does HTTP status code 404 mean?",
    "What is the capital of Japan?",
    "What is 2 + 2?",
)


DEMO_CLASSIFY_INPUTS: tuple[str, ...] = (
    "I loved this movie, it was wonderful.",
    "The service was terrible and slow.",
    "It was fine, nothing special.",
    "Absolutely the best purchase I have made this year.",
)


DEMO_MAX_TOKENS = 48


@dataclass(frozen=True)
class DemoAnswer:
    prompt: str
    tier: str
    confidence: str  # the x-kascade-trail header: each tier tried and its score
    escalated: bool
    answer: str
    seconds: float


def run_demo(cascade: ModelCascade, base_url: str, console: Console, *, api_key: str = "local") -> list[DemoAnswer]:
    """Send the demo requests through the official openai client; print each as it comes back."""
    count = len(DEMO_CLASSIFY_INPUTS if cascade.spec.task is Task.classify else DEMO_PROMPTS)
    console.print(
        f"\n[bold]Demo[/bold]: {count} requests to {base_url}/v1 with the openai client. "
        "Scores: each tier tried and its confidence (x-kascade-trail); the last tier always answers and is not scored.\n"
    )
    if cascade.spec.task is Task.classify:
        return _demo_classify(cascade, base_url, console, api_key)
    try:
        from openai import OpenAI
    except ImportError:
        raise LocalModeError(
            "the demo talks to the cascade with the official openai client: pip install openai"
        ) from None

    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=600.0)
    answers = []
    for number, prompt in enumerate(DEMO_PROMPTS, start=1):
        started = time.monotonic()
        if cascade.spec.task is Task.completion:
            completion = client.completions.with_raw_response.create(
                model=cascade.metadata.name, prompt=prompt, max_tokens=DEMO_MAX_TOKENS, temperature=0
            )
            headers, text = completion.headers, completion.parse().choices[0].text
        else:
            chat = client.chat.completions.with_raw_response.create(
                model=cascade.metadata.name,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=DEMO_MAX_TOKENS,
                temperature=0,
            )
            headers, text = chat.headers, chat.parse().choices[0].message.content or ""
        answer = DemoAnswer(
            prompt=prompt,
            tier=headers.get("x-kascade-tier", "?"),
            confidence=headers.get("x-kascade-trail", "-"),
            escalated=headers.get("x-kascade-escalated") == "true",
            answer=" ".join(text.split()),
            seconds=time.monotonic() - started,
        )
        answers.append(answer)
        _print_demo_answer(console, number, answer)
    return answers


def _demo_classify(cascade: ModelCascade, base_url: str, console: Console, api_key: str) -> list[DemoAnswer]:
    answers = []
    with httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=600.0) as client:
        for number, text in enumerate(DEMO_CLASSIFY_INPUTS, start=1):
            started = time.monotonic()
            response = client.post(f"{base_url}/classify", json={"model": cascade.metadata.name, "input": text})
            response.raise_for_status()
            label = response.json()["data"][0].get("label", "?")
            answer = DemoAnswer(
                prompt=text,
                tier=response.headers.get("x-kascade-tier", "?"),
                confidence=response.headers.get("x-kascade-trail", "-"),
                escalated=response.headers.get("x-kascade-escalated") == "true",
                answer=str(label),
                seconds=time.monotonic() - started,
            )
            answers.append(answer)
            _print_demo_answer(console, number, answer)
    return answers


def _print_demo_answer(console: Console, number: int, answer: DemoAnswer) -> None:
    short = answer.answer if len(answer.answer) <= 110 else answer.answer[:107] + "..."
    verdict = "[yellow]escalated[/yellow]" if answer.escalated else "[green]accepted[/green]"
    console.print(f"[bold]{number}.[/bold] {answer.prompt}")
    console.print(
        f"   → tier [bold]{answer.tier}[/bold]  {verdict}  scores {answer.confidence}  ({answer.seconds:.1f} s)",
        highlight=False,
    )
    console.print(f"   [dim]{short}[/dim]", highlight=False)
