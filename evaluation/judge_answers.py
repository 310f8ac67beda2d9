"""The offline LLM judge of `matcher: judge`: verdicts on (request, candidate, reference) triples, cached.

`kascade eval`/`calibrate` and the distillation gate ask the judge the one
question of `kascade.calibration.judge` and read its verdict the one way
(`verdict`: P(yes) among yes and no in the first token's top logprobs). Two
judges:

- `InProcessJudge`: a transformers folder loaded in this process (by default
  the manifest's last tier, as `kascade eval` answers with it): the judge
  chats go through the model's chat template and one batched, left-padded
  prefill; the logits of the next token are read, nothing is generated.
- `EndpointJudge`: an OpenAI-compatible endpoint (`--judge-url/--judge-model`
  or the manifest's `calibration.judge`), asked `judge_body` (one token,
  greedy, top logprobs) and read with the router's own logprobs reader.

`AnswerJudge` puts a judge behind a `VerdictFile` (one JSON-lines file per
judge, keyed by a hash of the judge and the whole question, like the answer
cache), so a rerun asks nothing again, and counts the questions that got no
verdict: they are reported and never counted as agreement.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kascade.api.agreement import Judge
from kascade.api.modelcascade import EngineKind, ModelCascade
from kascade.calibration.judge import TOP_LOGPROBS, judge_body, judge_messages, verdict
from kascade.calibration.prompt_text import request_text
from kascade.evaluation.records import Example
from kascade.runtime.online.agreement import AgreementQuestion

if TYPE_CHECKING:
    from kascade.runtime.engines.transformers.loading import LoadedModel


class JudgeError(Exception):
    """The judge cannot be asked at all (no model, an unreachable endpoint); the message says what to change."""


@dataclass(frozen=True)
class Verdict:
    """The judge's answer to one question: P(yes), or None (no verdict), and what the call cost in tokens."""

    probability: float | None
    prompt_tokens: int = 0
    completion_tokens: int = 1


class VerdictSource(Protocol):
    """Something that judges questions: a model in this process or an endpoint."""

    identity: str  # what the cache keys verdicts by: the judge's weights or its URL and model

    def judge(self, questions: Sequence[AgreementQuestion]) -> list[Verdict]: ...


def question_of(example: Example, candidate: str, reference: str) -> AgreementQuestion:
    """An example's request with two answers, as the judge's question."""
    body: dict[str, Any] = (
        {"messages": list(example.messages)}
        if example.messages is not None
        else {"prompt": example.prompt if example.prompt is not None else example.input or ""}
    )
    return AgreementQuestion(body=body, answer=candidate, reference=reference)


def question_messages(question: AgreementQuestion) -> list[dict[str, str]]:
    return judge_messages(request_text(question.body), question.answer, question.reference)


class VerdictFile:
    """Every verdict of one judge, on disk: one JSON line per question (a `.jsonl.gz` beside it is read too)."""

    def __init__(self, folder: Path, identity: str) -> None:
        digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9.-]+", "-", identity.split("@")[0]).strip("-")[-48:] or "judge"
        self.identity = identity
        self.path = folder / f"judge-{slug}-{digest}.jsonl"
        self._verdicts: dict[str, Verdict] = {}
        for path, opener in ((self.path.with_suffix(".jsonl.gz"), gzip.open), (self.path, open)):
            if path.is_file():
                with opener(path, "rt", encoding="utf-8") as handle:
                    self._read(handle)

    def _read(self, handle: Any) -> None:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run: that question is asked again
            if isinstance(record, dict) and "key" in record:
                self._verdicts[record["key"]] = Verdict(
                    record["probability"], record.get("prompt_tokens", 0), record.get("completion_tokens", 1)
                )

    def key(self, question: AgreementQuestion) -> str:
        blob = json.dumps({"judge": self.identity, "messages": question_messages(question)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def get(self, question: AgreementQuestion) -> Verdict | None:
        return self._verdicts.get(self.key(question))

    def put_many(self, judged: Sequence[tuple[AgreementQuestion, Verdict]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists()
        with self.path.open("a", encoding="utf-8") as handle:
            if new_file:
                handle.write(json.dumps({"header": {"judge": self.identity}}) + "\n")
            for question, answer in judged:
                key = self.key(question)
                self._verdicts[key] = answer
                record = {"key": key, "probability": answer.probability, "prompt_tokens": answer.prompt_tokens}
                handle.write(json.dumps(record | {"completion_tokens": answer.completion_tokens}) + "\n")


class AnswerJudge:
    """A judge behind its cache, with its cut-off and its counts: what the matcher and the gate ask."""

    def __init__(
        self,
        source: VerdictSource,
        *,
        verdicts_dir: Path | None = None,
        min_probability: float = 0.5,
        batch_size: int = 8,
    ) -> None:
        self.source = source
        self.cache = VerdictFile(verdicts_dir, source.identity) if verdicts_dir is not None else None
        self.min_probability = min_probability
        self.batch_size = batch_size
        self.asked = 0  # questions judged (cached or not)
        self.unjudged = 0  # of those, the ones with no verdict
        self.new_calls = 0  # questions sent to the judge by this process (not from the cache)
        self.prompt_tokens = 0  # the judge's tokens over every question asked (cached ones included)

    def verdicts(self, questions: Sequence[AgreementQuestion]) -> list[Verdict]:
        """Each question's verdict: cached ones first, the rest asked in batches of similar length and cached."""
        known: dict[int, Verdict] = {}
        missing = []
        for index, question in enumerate(questions):
            cached = self.cache.get(question) if self.cache is not None else None
            if cached is None:
                missing.append(index)
            else:
                known[index] = cached
        missing.sort(key=lambda i: len(request_text(questions[i].body)) + len(questions[i].answer))
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            answers = self.source.judge([questions[i] for i in batch])
            if len(answers) != len(batch):
                raise JudgeError(f"the judge answered {len(answers)} of {len(batch)} questions")
            if self.cache is not None:
                self.cache.put_many([(questions[i], a) for i, a in zip(batch, answers, strict=True)])
            known.update(zip(batch, answers, strict=True))
            self.new_calls += len(batch)
        found = [known[i] for i in range(len(questions))]
        self.asked += len(found)
        self.unjudged += sum(v.probability is None for v in found)
        self.prompt_tokens += sum(v.prompt_tokens for v in found)
        return found

    def agree(self, questions: Sequence[AgreementQuestion]) -> list[bool | None]:
        """Whether each candidate is as good as its reference: P(yes) >= min_probability; None: no verdict."""
        return [
            None if v.probability is None else v.probability >= self.min_probability for v in self.verdicts(questions)
        ]

    @property
    def description(self) -> str:
        counted = f"; {self.unjudged} of {self.asked} pairs had no verdict (counted as disagreement)"
        return f"{self.source.identity} says yes with P >= {self.min_probability:g}" + (counted if self.asked else "")


class InProcessJudge:
    """A causal LM loaded here (at its first use): one batched prefill per batch, the next token's top logprobs read."""

    def __init__(self, folder: Path, identity: str) -> None:
        self.identity = identity
        self.folder = folder
        self._loaded: LoadedModel | None = None  # loaded at the first question the cache does not answer

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            from kascade.runtime.engines.transformers.loading import load_model, without_progress_bars

            with without_progress_bars():
                self._loaded = load_model(self.folder, task="generate", device="auto")
        return self._loaded

    def judge(self, questions: Sequence[AgreementQuestion]) -> list[Verdict]:
        from kascade.runtime.engines.transformers.prompts import encode_prompt

        prompts = [encode_prompt(self.loaded.tokenizer, question_messages(q)) for q in questions]
        return [
            Verdict(verdict(alternatives), prompt_tokens=len(prompt))
            for prompt, alternatives in zip(prompts, self.first_token_alternatives(prompts), strict=True)
        ]

    def first_token_alternatives(self, prompts: Sequence[list[int]]) -> list[dict[str, float]]:
        """The top `TOP_LOGPROBS` next tokens of each prompt (text -> logprob), from one left-padded prefill."""
        import torch

        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.loaded.stop_token_ids)
        width = max(len(p) for p in prompts)
        device = self.loaded.device
        ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from its first real token
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
        top = min(TOP_LOGPROBS, logits.shape[-1])
        values, top_ids = torch.topk(torch.log_softmax(logits[:, -1, :].float(), dim=-1), top, dim=-1)
        found = []
        for row_values, row_ids in zip(values.tolist(), top_ids.tolist(), strict=True):
            alternatives: dict[str, float] = {}
            for token_id, logprob in zip(row_ids, row_values, strict=True):
                name = tokenizer.decode([token_id], skip_special_tokens=False)
                if name in alternatives:  # two ids may spell the same text: their probabilities add up
                    logprob = math.log(math.exp(alternatives[name]) + math.exp(logprob))
                alternatives[name] = float(logprob)
            found.append(alternatives)
        return found


class EndpointJudge:
    """An OpenAI-compatible endpoint asked `judge_body`, its answers read with the router's logprobs reader."""

    def __init__(self, url: str, model: str, *, api_key: str | None = None, concurrency: int = 4) -> None:
        self.identity = f"{url.rstrip('/')}#{model}"
        self.url = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.concurrency = concurrency

    def judge(self, questions: Sequence[AgreementQuestion]) -> list[Verdict]:
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(questions)))) as pool:
            return list(pool.map(self._ask, questions))

    def _ask(self, question: AgreementQuestion) -> Verdict:
        import httpx

        body = judge_body(self.model, request_text(question.body), question.answer, question.reference)
        try:
            response = httpx.post(self.url, json=body, headers=self.headers, timeout=120)
        except httpx.HTTPError as exc:
            raise JudgeError(f"the judge at {self.url} could not be reached: {exc}") from None
        if response.status_code != 200:
            raise JudgeError(f"the judge at {self.url} answered {response.status_code}: {response.text[:300]}")
        try:
            payload = response.json()
        except ValueError:
            return Verdict(None)  # garbage: no verdict, counted
        return endpoint_verdict(payload)


def endpoint_verdict(payload: Any) -> Verdict:
    """The verdict in a chat-completions response: its first token's alternatives; None when it holds none."""
    from kascade.runtime.engines.base import Endpoint
    from kascade.runtime.logprobs import choice_token_evidence, first_choice

    choice = first_choice(payload)
    usage = payload.get("usage") if isinstance(payload, dict) else None
    prompt_tokens = int(usage.get("prompt_tokens", 0)) if isinstance(usage, dict) else 0
    evidence = choice_token_evidence(Endpoint.chat, choice, with_names=True) if choice is not None else []
    if not evidence:
        return Verdict(None, prompt_tokens)
    first = evidence[0]
    alternatives = dict(zip(first.top_tokens, first.top_logprobs, strict=False))
    alternatives.setdefault(first.text, first.logprob)
    return Verdict(verdict(alternatives), prompt_tokens)


def judge_for(
    cascade: ModelCascade,
    *,
    url: str | None = None,
    model: str | None = None,
    verdicts_dir: Path | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 8,
) -> AnswerJudge:
    """The judge of a cascade offline: `url`/`model` if given, else `calibration.judge`, else the last tier."""
    spec: Judge = cascade.spec.calibration.judge if cascade.spec.calibration is not None else Judge()
    if (url is None) != (model is None):
        raise JudgeError("--judge-url and --judge-model go together (the model to ask at that endpoint)")
    source: VerdictSource
    if url is not None and model is not None:
        source = EndpointJudge(url, model, concurrency=spec.concurrency)
    elif spec.url is not None and spec.model is not None:
        source = EndpointJudge(spec.url, spec.model, api_key=_secret(spec), concurrency=spec.concurrency)
    else:
        last = cascade.spec.tiers[-1]
        if last.engine is EngineKind.external:
            source = EndpointJudge(last.model.uri, last.served_name, concurrency=spec.concurrency)
        elif last.engine is EngineKind.vllm:
            raise JudgeError(
                f"tier {last.name} is served by vLLM: judge with it at its server (--judge-url/--judge-model)"
            )
        else:
            from kascade.evaluation.collect import model_identity
            from kascade.runtime.models.files import resolve_model_uri

            folder = resolve_model_uri(last.model.uri, cache_dir=cache_dir)
            source = InProcessJudge(folder, model_identity(last, folder))
    return AnswerJudge(source, verdicts_dir=verdicts_dir, min_probability=spec.min_probability, batch_size=batch_size)


def _secret(spec: Judge) -> str | None:
    from kascade.runtime.local.manifest import secret_env_var

    return os.environ.get(secret_env_var(spec.api_key_secret)) if spec.api_key_secret is not None else None
