"""The traffic scripts/vllm_contract.py checks against vLLM is the traffic a cluster sees.

The check itself needs vLLM's own environment (scripts/vllm-contract.sh); these tests run its traffic half
here, so that a change of the router or of the examples cannot leave it checking less than it claims: each
parameter Kascade adds on its own (scored logprobs, the teacher's token ids and top-k, the streaming usage
option, the shadow call, the on-policy teacher's prompt_logprobs) must be among the bodies it validates.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from kascade.api.loop import Training
from kascade.api.modelcascade import EngineKind

pytestmark = pytest.mark.slow  # real routers and tiers on loopback

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "vllm_contract.py"


@pytest.fixture(scope="module")
def contract():
    spec = importlib.util.spec_from_file_location("vllm_contract", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def calls(contract):
    return contract.router_calls()


def test_every_vllm_tier_of_every_example_has_its_serve_args_checked(contract) -> None:
    targets = {(example, tier) for example, _, tier in contract.serve_targets()}
    for example, cascade in contract.vllm_cascades():
        for tier in cascade.spec.tiers:
            assert ((example, tier.name) in targets) is (tier.engine is EngineKind.vllm)
    assert {"chat-vllm-gpu.yaml:chat", "external-last-tier.yaml:support-bot"} <= {
        e for e, _ in contract.vllm_cascades()
    }


def test_scored_tiers_are_asked_for_logprobs_on_both_endpoints(contract, calls) -> None:
    for example, cascade in contract.vllm_cascades():
        scored = [tier.name for tier in cascade.spec.tiers[:-1] if tier.engine is EngineKind.vllm]
        for tier in scored:
            bodies = [call for call in calls if (call.example, call.tier) == (example, tier)]
            assert any(
                c.path == "/v1/chat/completions" and c.body["logprobs"] is True and "top_logprobs" in c.body
                for c in bodies
            )
            assert any(c.path == "/v1/completions" and isinstance(c.body["logprobs"], int) for c in bodies)


def test_the_last_tier_is_asked_for_teacher_tokens_and_shadow_calls(contract, calls) -> None:
    example, cascade = next(pair for pair in contract.vllm_cascades() if pair[0] == "chat-vllm-gpu.yaml:chat")
    last = [call for call in calls if (call.example, call.tier) == (example, cascade.spec.tiers[-1].name)]
    top_k = cascade.spec.escalation_log.top_logprobs
    assert any(
        c.body.get("return_tokens_as_token_ids") is True and c.body["top_logprobs"] == top_k
        for c in last
        if c.path == "/v1/chat/completions"
    )
    assert any(
        c.body.get("return_tokens_as_token_ids") is True and c.body["logprobs"] == top_k
        for c in last
        if c.path == "/v1/completions"
    )
    # A confident small tier answered, and online calibration still asked the last tier (rate 1 here).
    assert any(not c.body.get("stream") for c in last if c.case == "confident")


def test_streams_are_asked_to_report_usage(contract, calls) -> None:
    streamed = [call for call in calls if call.body.get("stream")]
    assert streamed
    assert all(call.body["stream_options"]["include_usage"] is True for call in streamed)


def test_the_on_policy_teacher_asks_for_prompt_logprobs_and_gets_them_in_the_engines_layout(contract) -> None:
    calls, answers = contract.teacher_calls(Training.model_fields["teacher_top_k"].default)
    assert [call.body["prompt_logprobs"] for call in calls] == [Training.model_fields["teacher_top_k"].default]
    assert calls[0].body["prompt"] == [11, 12, 13, 21, 22] and calls[0].body["max_tokens"] == 1
    assert answers[0]["choices"][0]["prompt_logprobs"][0] is None


def test_the_fixed_upstream_answers_cover_every_layout_checked(contract) -> None:
    answers = contract.upstream_answers()
    assert answers["chat with token ids"]["choices"][0]["logprobs"]["content"][0]["token"].startswith("token_id:")
    assert any(
        name.startswith("chat stream chunk") and answer["choices"] == [] and "usage" in answer
        for name, answer in answers.items()
    )
    assert answers["classify"]["data"][0]["label"] == "positive"
