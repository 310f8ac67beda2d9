"""The in-process transformers engine, called directly, on tiny random models."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kascade.runtime.engines.base import Endpoint, Engine, TierError, TierErrorKind
from kascade.runtime.engines.transformers import (
    ModelLoadError,
    StopStringMatcher,
    TransformersEngine,
    fallback_chat_prompt,
    load_causal_lm,
    load_classifier,
)
from kascade.runtime.engines.transformers.decoding import OutputText
from kascade.runtime.engines.transformers.generation import cache_keyword

# A deprecation reaching our engine's code paths is a bug to fix now, not when the API is gone:
# every engine test fails on one (worker threads included; the filters are process-wide).
pytestmark = pytest.mark.filterwarnings("error::DeprecationWarning", "error::FutureWarning")

T = TypeVar("T")
HELLO = [{"role": "user", "content": "Hello! What is the capital of France?"}]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def collect(chunks: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in chunks]


@pytest.fixture(scope="module")
def lm(tiny_small_lm_dir: Path) -> TransformersEngine:
    return TransformersEngine.load(tiny_small_lm_dir, served_model_name="small", device="cpu")


@pytest.fixture(scope="module")
def classifier(tiny_classifier_dir: Path) -> TransformersEngine:
    return TransformersEngine.load(tiny_classifier_dir, task="classify", served_model_name="clf", device="cpu")


def chat(engine: TransformersEngine, **body: Any) -> dict[str, Any]:
    return run(engine.call(Endpoint.chat, {"messages": HELLO, **body}))


def test_implements_the_engine_protocol(lm: TransformersEngine) -> None:
    assert isinstance(lm, Engine)
    assert run(lm.ready())


def test_chat_completion_layout(lm: TransformersEngine) -> None:
    response = chat(lm, max_tokens=8, temperature=0)
    assert response["id"].startswith("chatcmpl-")
    assert response["object"] == "chat.completion"
    assert response["model"] == "small"
    assert isinstance(response["created"], int)
    (choice,) = response["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["logprobs"] is None
    assert choice["finish_reason"] in ("stop", "length")
    usage = response["usage"]
    assert usage["prompt_tokens"] > 0
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    json.dumps(response)  # plain JSON, ready for the wire


def test_completion_layout_and_default_max_tokens(lm: TransformersEngine) -> None:
    response = run(lm.call(Endpoint.completion, {"prompt": "The capital of France is", "temperature": 0}))
    assert response["id"].startswith("cmpl-")
    assert response["object"] == "text_completion"
    assert response["model"] == "small"
    (choice,) = response["choices"]
    assert isinstance(choice["text"], str)
    assert choice["logprobs"] is None
    # vLLM's default for /v1/completions is 16 tokens.
    assert response["usage"]["completion_tokens"] <= 16
    if choice["finish_reason"] == "length":
        assert response["usage"]["completion_tokens"] == 16


def test_max_tokens_ends_with_length(lm: TransformersEngine) -> None:
    response = chat(lm, max_tokens=5, temperature=0)
    assert response["choices"][0]["finish_reason"] == "length"
    assert response["usage"]["completion_tokens"] == 5
    # max_completion_tokens is the newer name and wins.
    response = chat(lm, max_completion_tokens=3, max_tokens=5, temperature=0)
    assert response["usage"]["completion_tokens"] == 3


def test_chat_logprobs_are_the_raw_model_distribution(lm: TransformersEngine, tiny_small_lm_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    response = chat(lm, max_tokens=6, temperature=0, logprobs=True, top_logprobs=5)
    content = response["choices"][0]["logprobs"]["content"]
    assert len(content) == response["usage"]["completion_tokens"]
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["bytes"] == list(entry["token"].encode("utf-8", errors="replace"))
        top = entry["top_logprobs"]
        assert len(top) == 5
        values = [t["logprob"] for t in top]
        assert values == sorted(values, reverse=True)
        assert all(v <= 0 for v in values)
        assert entry["logprob"] <= values[0] + 1e-6
        # Greedy decoding picks the most likely token.
        assert entry["logprob"] == pytest.approx(values[0], abs=1e-6)
        assert entry["token"] == top[0]["token"]

    # The first token's logprobs are exactly the model's log-softmax at the end of the prompt.
    tokenizer = AutoTokenizer.from_pretrained(tiny_small_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_small_lm_dir, dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert response["usage"]["prompt_tokens"] == len(ids)
    with torch.inference_mode():
        expected = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
    best = torch.topk(expected, 5)
    assert [t["logprob"] for t in content[0]["top_logprobs"]] == pytest.approx(best.values.tolist(), abs=1e-4)


def test_logprobs_ignore_temperature(lm: TransformersEngine) -> None:
    greedy = chat(lm, max_tokens=1, temperature=0, logprobs=True, top_logprobs=3)
    hot = chat(lm, max_tokens=1, temperature=1.7, top_k=1, logprobs=True, top_logprobs=3)
    first = greedy["choices"][0]["logprobs"]["content"][0]
    second = hot["choices"][0]["logprobs"]["content"][0]
    assert first["token"] == second["token"]  # top_k=1 leaves only the best token
    assert second["logprob"] == pytest.approx(first["logprob"], abs=1e-6)


def test_logprobs_without_top_logprobs(lm: TransformersEngine) -> None:
    content = chat(lm, max_tokens=3, temperature=0, logprobs=True)["choices"][0]["logprobs"]["content"]
    assert all(entry["top_logprobs"] == [] and entry["logprob"] <= 0 for entry in content)


def test_completion_logprobs_layout(lm: TransformersEngine) -> None:
    response = run(
        lm.call(Endpoint.completion, {"prompt": "One two three", "max_tokens": 6, "temperature": 0, "logprobs": 2})
    )
    logprobs = response["choices"][0]["logprobs"]
    n = response["usage"]["completion_tokens"]
    assert set(logprobs) == {"text_offset", "token_logprobs", "tokens", "top_logprobs"}
    assert all(len(values) == n for values in logprobs.values())
    assert logprobs["text_offset"][0] == 0
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"])
    for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]):
        assert top[token] == logprob  # the chosen token is always listed
        assert 1 <= len(top) <= 3
        assert logprob == pytest.approx(max(top.values()), abs=1e-6)  # greedy


def test_stop_strings_cut_the_output(lm: TransformersEngine) -> None:
    free = chat(lm, max_tokens=12, temperature=0)["choices"][0]["message"]["content"]
    stop = next(free[i : i + 2] for i in range(2, len(free) - 1) if "\ufffd" not in free[i : i + 2])
    expected = free[: free.find(stop)]

    response = chat(lm, max_tokens=12, temperature=0, stop=[stop, "never appears here"])
    choice = response["choices"][0]
    assert choice["message"]["content"] == expected
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] == stop

    chunks = run(
        collect(lm.stream(Endpoint.chat, {"messages": HELLO, "max_tokens": 12, "temperature": 0, "stop": stop}))
    )
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert "".join(deltas) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stop_string_matcher_holds_back_possible_prefixes() -> None:
    matcher = StopStringMatcher(["END"])
    assert matcher.push("abcE") == "ab"  # the last two characters could still start "END"
    assert matcher.push("N") == "c"
    assert matcher.push("D and more") == ""
    assert matcher.matched == "END"
    assert matcher.text == "abc"


def test_output_text_cuts_at_stop_strings_and_says_why_it_ended() -> None:
    letters = {1: "a", 2: "b", 3: "c", 9: "<eos>"}
    decode = lambda ids: "".join(letters[i] for i in ids if i != 9)  # noqa: E731 - skip_special_tokens
    stopped = OutputText(decode, ["bc"], stop_token_ids={9})
    # "a" is held back until it cannot be the start of "bc".
    assert [stopped.push(i, last=False) for i in (1, 2, 3)] == [("", None), ("a", None), ("", "stop")]
    assert stopped.stop_reason == "bc"
    eos = OutputText(decode, [], stop_token_ids={9})
    assert [eos.push(i, last=False) for i in (1, 9)] == [("a", None), ("", "stop")]
    assert eos.stop_reason is None
    assert OutputText(decode, [], stop_token_ids={9}).push(2, last=True) == ("b", "length")


def test_seeded_sampling_is_reproducible(lm: TransformersEngine) -> None:
    def sample(seed: int) -> str:
        return chat(lm, max_tokens=20, temperature=1.0, seed=seed)["choices"][0]["message"]["content"]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_any_integer_is_a_seed(lm: TransformersEngine) -> None:
    for seed in (-1, 0, 2**70):
        assert chat(lm, max_tokens=2, seed=seed)["usage"]["completion_tokens"] == 2


def test_top_k_one_and_tiny_top_p_are_greedy(lm: TransformersEngine) -> None:
    greedy = chat(lm, max_tokens=10, temperature=0)["choices"][0]["message"]["content"]
    assert chat(lm, max_tokens=10, temperature=1.5, top_k=1, seed=1)["choices"][0]["message"]["content"] == greedy
    assert chat(lm, max_tokens=10, temperature=1.0, top_p=1e-6, seed=2)["choices"][0]["message"]["content"] == greedy


def test_streaming_matches_non_streaming(lm: TransformersEngine) -> None:
    body = {"messages": HELLO, "max_tokens": 10, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    whole = run(lm.call(Endpoint.chat, body))
    chunks = run(collect(lm.stream(Endpoint.chat, {**body, "stream": True, "stream_options": {"include_usage": True}})))

    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    token_chunks = chunks[1:-1]
    text = "".join(c["choices"][0]["delta"]["content"] for c in token_chunks)
    assert text == whole["choices"][0]["message"]["content"]
    streamed_logprobs = [entry for c in token_chunks for entry in c["choices"][0]["logprobs"]["content"]]
    assert streamed_logprobs == whole["choices"][0]["logprobs"]["content"]
    assert token_chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in token_chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == whole["usage"]


def test_completion_streaming(lm: TransformersEngine) -> None:
    body = {"prompt": "The sun is", "max_tokens": 7, "temperature": 0, "logprobs": 1}
    whole = run(lm.call(Endpoint.completion, body))
    chunks = run(collect(lm.stream(Endpoint.completion, {**body, "stream": True})))
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    offsets = [offset for c in chunks for offset in c["choices"][0]["logprobs"]["text_offset"]]
    assert offsets == whole["choices"][0]["logprobs"]["text_offset"]
    assert "usage" not in chunks[-1]


class _PacedModel:
    """The model, one forward pass per `seconds` at most: a real model's pace, so the reader keeps up.

    A tiny model decodes a token in about a millisecond, faster than a loaded
    two-core machine schedules the reading coroutine; then the worker is
    ahead by chance, not by a fault of the engine.
    """

    def __init__(self, model: Any, seconds: float) -> None:
        self._model, self._seconds = model, seconds

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._seconds)
        return self._model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def test_closing_a_stream_stops_generation(lm: TransformersEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lm, "_model", _PacedModel(lm._model, seconds=0.05))

    async def scenario() -> tuple[int, int]:
        before = lm.generated_tokens
        stream = lm.stream(Endpoint.chat, {"messages": HELLO, "max_tokens": 400, "temperature": 0})
        for _ in range(4):  # the role chunk, then three tokens
            await anext(stream)
        await stream.aclose()
        stopped_at = lm.generated_tokens - before
        await asyncio.sleep(0.2)
        return stopped_at, lm.generated_tokens - before

    stopped_at, later = run(scenario())
    assert stopped_at <= 5
    assert later == stopped_at
    # The model is free again at once.
    assert chat(lm, max_tokens=2, temperature=0)["usage"]["completion_tokens"] == 2


def test_concurrent_requests_take_turns(lm: TransformersEngine) -> None:
    async def both() -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(lm.call(Endpoint.chat, {"messages": HELLO, "max_tokens": 6, "temperature": 0}) for _ in range(3))
        )

    texts = {r["choices"][0]["message"]["content"] for r in run(both())}
    assert len(texts) == 1  # same greedy answer: no request saw another's KV cache


def test_classify(classifier: TransformersEngine) -> None:
    response = run(classifier.call(Endpoint.classify, {"model": "clf", "input": ["I loved it", "I hated it", "meh"]}))
    assert response["id"].startswith("classify-")
    assert response["object"] == "list"
    assert response["model"] == "clf"
    assert [d["index"] for d in response["data"]] == [0, 1, 2]
    for item in response["data"]:
        assert item["num_classes"] == 2 == len(item["probs"])
        assert math.isclose(sum(item["probs"]), 1.0, rel_tol=1e-5)
        assert item["label"] == ("negative", "positive")[item["probs"].index(max(item["probs"]))]
    usage = response["usage"]
    assert usage["completion_tokens"] == 0 and usage["total_tokens"] == usage["prompt_tokens"] > 0

    single = run(classifier.call(Endpoint.classify, {"input": "I loved it"}))
    assert single["data"][0]["probs"] == pytest.approx(response["data"][0]["probs"])


BAD_CHAT_BODIES = [
    {},
    {"messages": []},
    {"messages": "hello"},
    {"messages": [{"content": "no role"}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    {"messages": HELLO, "n": 2},
    {"messages": HELLO, "temperature": -0.5},
    {"messages": HELLO, "temperature": "hot"},
    {"messages": HELLO, "temperature": float("nan")},
    {"messages": HELLO, "top_p": 0},
    {"messages": HELLO, "top_p": 1.5},
    {"messages": HELLO, "top_k": -2},
    {"messages": HELLO, "max_tokens": 0},
    {"messages": HELLO, "max_tokens": "5"},
    {"messages": HELLO, "max_tokens": True},
    {"messages": HELLO, "max_tokens": 100_000},
    {"messages": HELLO, "logprobs": True, "top_logprobs": 21},
    {"messages": HELLO, "top_logprobs": 3},
    {"messages": HELLO, "logprobs": "yes"},
    {"messages": HELLO, "stop": 5},
    {"messages": HELLO, "seed": 1.5},
    {"messages": HELLO, "stream_options": {"include_usage": True}},
    {"messages": [{"role": "user", "content": "word " * 2000}]},
]


@pytest.mark.parametrize("body", BAD_CHAT_BODIES, ids=[json.dumps(b)[:60] for b in BAD_CHAT_BODIES])
def test_bad_chat_requests_are_client_errors(lm: TransformersEngine, body: dict[str, Any]) -> None:
    with pytest.raises(TierError) as caught:
        run(lm.call(Endpoint.chat, body))
    error = caught.value
    assert error.kind is TierErrorKind.client and not error.retryable
    assert error.status == 400
    assert error.body is not None
    assert error.body["error"]["type"] == "BadRequestError"
    assert error.body["error"]["code"] == 400
    assert error.body["error"]["message"]


BAD_COMPLETION_BODIES = [
    {},
    {"prompt": ""},
    {"prompt": ["two", "prompts"]},
    {"prompt": 42},
    {"prompt": "hi", "echo": True},
    {"prompt": "hi", "suffix": "!"},
    {"prompt": "hi", "logprobs": 21},
    {"prompt": "hi", "logprobs": -1},
    {"prompt": [1, 2, 999_999]},
]


@pytest.mark.parametrize("body", BAD_COMPLETION_BODIES, ids=[json.dumps(b)[:60] for b in BAD_COMPLETION_BODIES])
def test_bad_completion_requests_are_client_errors(lm: TransformersEngine, body: dict[str, Any]) -> None:
    with pytest.raises(TierError) as caught:
        run(lm.call(Endpoint.completion, body))
    assert caught.value.kind is TierErrorKind.client and caught.value.status == 400


def test_bad_stream_requests_fail_before_the_first_chunk(lm: TransformersEngine) -> None:
    with pytest.raises(TierError) as caught:
        run(collect(lm.stream(Endpoint.chat, {"messages": HELLO, "n": 3, "stream": True})))
    assert caught.value.status == 400


def test_completion_accepts_one_prompt_in_a_list_and_token_ids(lm: TransformersEngine) -> None:
    as_text = run(lm.call(Endpoint.completion, {"prompt": ["The sun is"], "max_tokens": 4, "temperature": 0}))
    ids = lm._tokenizer("The sun is")["input_ids"]
    as_ids = run(lm.call(Endpoint.completion, {"prompt": ids, "max_tokens": 4, "temperature": 0}))
    assert as_text["choices"][0]["text"] == as_ids["choices"][0]["text"]


def test_wrong_endpoint_for_the_model(lm: TransformersEngine, classifier: TransformersEngine) -> None:
    with pytest.raises(TierError) as caught:
        run(lm.call(Endpoint.classify, {"input": "hi"}))
    assert caught.value.status == 400 and "Classification API" in caught.value.message
    with pytest.raises(TierError) as caught:
        run(classifier.call(Endpoint.chat, {"messages": HELLO}))
    assert caught.value.status == 400 and "Chat Completions API" in caught.value.message
    with pytest.raises(TierError):
        run(classifier.call(Endpoint.classify, {"input": []}))


def test_loading_works_without_the_engine(tiny_small_lm_dir: Path, tiny_classifier_dir: Path) -> None:
    # Distillation loads (and trains) the same models as the engine serves.
    lm = load_causal_lm(tiny_small_lm_dir, device="cpu")
    assert lm.task == "generate" and not lm.model.training
    assert lm.max_model_len == 512
    assert lm.tokenizer.eos_token_id in lm.stop_token_ids
    assert str(lm.device) == "cpu" and next(lm.model.parameters()).dtype.is_floating_point
    assert cache_keyword(lm.model) in ("cache", "past_key_values")
    classifier = load_classifier(tiny_classifier_dir, device="cpu", dtype="bfloat16")
    assert classifier.task == "classify" and next(classifier.model.parameters()).dtype == __import__("torch").bfloat16
    with pytest.raises(ModelLoadError, match="--task generate"):
        load_classifier(tiny_small_lm_dir)


def test_load_errors_say_what_is_wrong(tmp_path: Path, tiny_small_lm_dir: Path, tiny_classifier_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        TransformersEngine.load(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="no config.json"):
        TransformersEngine.load(tmp_path)
    with pytest.raises(ModelLoadError, match="--task generate"):
        TransformersEngine.load(tiny_small_lm_dir, task="classify")
    with pytest.raises(ModelLoadError, match="--task classify"):
        TransformersEngine.load(tiny_classifier_dir, task="generate")


def test_tokenizer_without_chat_template_uses_the_fallback(tmp_path: Path, tiny_small_lm_dir: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(tiny_small_lm_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config_path = bare / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))

    engine = TransformersEngine.load(bare, device="cpu")
    assert not engine._tokenizer.chat_template
    response = run(engine.call(Endpoint.chat, {"messages": HELLO, "max_tokens": 3, "temperature": 0}))
    expected_prompt = fallback_chat_prompt(HELLO)
    assert expected_prompt.endswith("\nassistant:")
    assert response["usage"]["prompt_tokens"] == len(
        engine._tokenizer(expected_prompt, add_special_tokens=False)["input_ids"]
    )
    run(engine.aclose())


def test_closed_engine_is_unavailable(tiny_small_lm_dir: Path) -> None:
    engine = TransformersEngine.load(tiny_small_lm_dir, device="cpu")
    run(engine.aclose())
    assert not run(engine.ready())
    with pytest.raises(TierError) as caught:
        run(engine.call(Endpoint.chat, {"messages": HELLO}))
    assert caught.value.kind is TierErrorKind.unavailable and caught.value.status == 503


def test_tokens_are_named_by_id_when_asked_as_vllm_does(lm: TransformersEngine) -> None:
    """return_tokens_as_token_ids: every token and top entry is `token_id:<id>`; the text is unchanged."""
    plain = chat(lm, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    by_id = chat(lm, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3, return_tokens_as_token_ids=True)
    assert by_id["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]
    content = by_id["choices"][0]["logprobs"]["content"]
    names = [entry["token"] for entry in content] + [t["token"] for entry in content for t in entry["top_logprobs"]]
    assert names and all(name.startswith("token_id:") and name[9:].isdigit() for name in names)
    decoded = "".join(lm._tokenizer.decode([int(entry["token"][9:])]) for entry in content)
    assert decoded.startswith(plain["choices"][0]["message"]["content"][:3])
    plain_logprobs = [entry["logprob"] for entry in plain["choices"][0]["logprobs"]["content"]]
    assert [entry["logprob"] for entry in content] == pytest.approx(plain_logprobs)


def test_prompt_logprobs_score_each_prompt_token_as_vllm_does(lm: TransformersEngine) -> None:
    """prompt_logprobs=k: None first, then per position the prompt token's logprob and rank, and the top k."""
    ids = lm._tokenizer("The cat sat on the mat.")["input_ids"]
    body = {"prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 3}
    scored = run(lm.call(Endpoint.completion, body))["choices"][0]["prompt_logprobs"]
    assert len(scored) == len(ids) and scored[0] is None
    import torch

    with torch.no_grad():
        expected = torch.log_softmax(lm._model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
    for position, (token_id, entries) in enumerate(zip(ids[1:], scored[1:], strict=True)):
        assert 3 <= len(entries) <= 4 and str(token_id) in entries
        assert entries[str(token_id)]["logprob"] == pytest.approx(float(expected[position, token_id]), abs=1e-4)
        ranks = sorted(entry["rank"] for entry in entries.values())
        assert ranks[:3] == [1, 2, 3]
    with pytest.raises(TierError, match="prompt_logprobs"):
        run(lm.call(Endpoint.chat, {"messages": HELLO, "prompt_logprobs": 2}))
