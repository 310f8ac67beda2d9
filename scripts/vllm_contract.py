"""Kascade's contract with vLLM, checked against the real vllm package (scripts/vllm-contract.sh runs this in
vllm's own environment; no GPU needed, nothing is served by vLLM).

1. requests: the operator's router config for every example (its ConfigMap, as a cluster gets it) runs the
   real router on loopback in front of fixed-answer tiers that record what they are sent; callers ask as an
   OpenAI client does (chat and completions, whole and streamed, with and without their own logprobs), the
   small tiers once confident and once not, so the scored calls (`logprobs`, `top_logprobs`), the last
   tier's teacher call (`return_tokens_as_token_ids`, the log's top-k), the streaming overrides
   (`stream_options.include_usage`) and the shadow calls of online calibration are all made. The on-policy
   teacher call of `kascade distill` (`prompt_logprobs`) is made by its own client. Each body a vllm tier
   received must validate against vLLM's `ChatCompletionRequest`/`CompletionRequest`, carry no field vLLM
   ignores (vLLM accepts unknown fields and drops them; here that fails), turn into vLLM's sampling
   parameters, and ask for no more logprobs than the tier's rendered `--max-logprobs` allows.
2. serve args: the engine container of every vllm tier of every example (operator builders) must name a
   vLLM entrypoint that exists and is not deprecated, and its args must parse with that entrypoint's own
   parser and checks, meaning what the operator meant (model, served name, port).
3. responses: what the fixed test upstream (`kascade.testing.fixed_upstream`) and the engines' vLLM layout
   writer answer — chat, completion, stream chunks, logprobs, token ids, prompt_logprobs, classify — must
   validate against vLLM's response types with no field vLLM does not have.

Prints `PASS name` or `FAIL name: why` per check (`NOTE` for what runs differently without a GPU), then
`N passed, N failed`; exits 1 on a failure. The traffic half (`router_calls`, `teacher_calls`,
`upstream_answers`) imports no vLLM: tests/test_vllm_contract_script.py runs it in the project's environment.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from kascade.api.modelcascade import EngineKind, ModelCascade
from kascade.operator.builders import build_children
from kascade.operator.engine_vllm import COMMAND as ENGINE_COMMAND
from kascade.operator.settings import OperatorSettings
from kascade.runtime.config import RouterConfig
from kascade.runtime.engines import vllm_layout as layout
from kascade.runtime.router import create_router_app
from kascade.runtime.serving import BackgroundServer
from kascade.testing.fixed_upstream import FixedBehaviour, create_fixed_upstream_app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CHAT = [{"role": "user", "content": "Say hello"}]
# What callers send, as the official OpenAI client writes them.
CALLER_BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 16}),
    "chat, caller's logprobs": (
        "/v1/chat/completions",
        {"messages": CHAT, "max_tokens": 16, "logprobs": True, "top_logprobs": 3},
    ),
    "chat stream": ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 16, "stream": True}),
    "chat stream with usage": (
        "/v1/chat/completions",
        {"messages": CHAT, "max_tokens": 16, "stream": True, "stream_options": {"include_usage": True}},
    ),
    "completion": ("/v1/completions", {"prompt": "Say hello", "max_tokens": 16}),
    "completion, caller's logprobs": ("/v1/completions", {"prompt": "Say hello", "max_tokens": 16, "logprobs": 2}),
    "completion stream with usage": (
        "/v1/completions",
        {"prompt": "Say hello", "max_tokens": 16, "stream": True, "stream_options": {"include_usage": True}},
    ),
}
SMALL_TIERS = {"confident": 0.99, "unsure": 0.01}  # every tier before the last accepts, or escalates


@dataclass(frozen=True)
class Call:
    """One request a tier received: where from (example, case), which tier and engine, the path and the body."""

    example: str
    case: str
    tier: str
    engine: EngineKind
    path: str
    body: dict[str, Any]


def vllm_cascades() -> list[tuple[str, ModelCascade]]:
    """Every ModelCascade in examples/ with at least one vllm tier, named `file:cascade`."""
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ModelCascade":
                cascade = ModelCascade.model_validate(doc)
                if any(tier.engine is EngineKind.vllm for tier in cascade.spec.tiers):
                    found.append((f"{path.name}:{cascade.metadata.name}", cascade))
    return found


def serve_targets() -> list[tuple[str, ModelCascade, str]]:
    """(example, cascade, tier) for every vllm tier of every example, and the first example's first tier once
    per model URI scheme the vllm builder renders its own way (hf with a revision, pvc, s3)."""
    targets = [
        (example, cascade, tier.name)
        for example, cascade in vllm_cascades()
        for tier in cascade.spec.tiers
        if tier.engine is EngineKind.vllm
    ]
    return targets + [(example, cascade, cascade.spec.tiers[0].name) for example, cascade in _model_uri_variants()]


def _model_uri_variants() -> list[tuple[str, ModelCascade]]:
    path = EXAMPLES / "chat-vllm-gpu.yaml"
    doc = next(doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == "ModelCascade")
    variants = []
    for uri in (
        "hf://Qwen/Qwen2.5-7B-Instruct@a09a35458c702b33eeacc393d103063234e8bc28",
        "pvc://models/qwen2.5-7b",
        "s3://models/qwen2.5-7b",
    ):
        varied = json.loads(json.dumps(doc))
        varied["spec"]["tiers"][0]["model"]["uri"] = uri
        varied["spec"].pop("distillation", None)  # a distilled tier's model lives where runs promote it
        variants.append((f"{path.name} with {uri}", ModelCascade.model_validate(varied)))
    return variants


def rendered_router_config(cascade: ModelCascade) -> RouterConfig:
    """The router's config exactly as the operator's ConfigMap hands it to a router pod."""
    configmap = next(child for child in build_children(cascade, OperatorSettings()) if child["kind"] == "ConfigMap")
    return RouterConfig.model_validate(yaml.safe_load(configmap["data"]["router.yaml"]))


def recording(app: Any, seen: list[tuple[str, dict[str, Any]]]) -> Any:
    """`app` behind an ASGI layer that keeps every POST's (path, JSON body) before handing it on."""

    async def asgi(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await app(scope, receive, send)
        parts, more = [], True
        while more:
            message = await receive()
            parts.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(parts)
        seen.append((scope["path"], json.loads(body)))
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return asgi


def _settled(arrived: Callable[[], int], quiet: float = 0.5, limit: float = 10.0) -> None:
    """Wait until no call has arrived for `quiet` seconds: shadow calls run after the caller's answer."""
    deadline, count, since = time.monotonic() + limit, -1, time.monotonic()
    while time.monotonic() < deadline:
        if arrived() != count:
            count, since = arrived(), time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)


def _router_config_for_loopback(config: RouterConfig, urls: dict[str, str], log_dir: str) -> RouterConfig:
    """The rendered config with the tiers on loopback; what needs a cluster (status writes, mounted Secrets,
    the claim) is swapped for local stand-ins, and every drawn request is shadowed (rate 1)."""
    tiers = [tier.model_copy(update={"url": urls[tier.name], "api_key_file": None}) for tier in config.tiers]
    update: dict[str, Any] = {"tiers": tiers, "status_report": None, "api_keys_file": None}
    if config.escalation_log is not None:
        update["escalation_log"] = config.escalation_log.model_copy(update={"uri": log_dir})
    if config.shadow_sampling is not None:
        update["shadow_sampling"] = config.shadow_sampling.model_copy(update={"rate": 1.0})
    return config.model_copy(update=update)


def router_calls() -> list[Call]:
    """Every request the router sends its tiers, for every example with a vllm tier and every case."""
    calls: list[Call] = []
    for example, cascade in vllm_cascades():
        engines = {tier.name: tier.engine for tier in cascade.spec.tiers}
        last = cascade.spec.tiers[-1].name
        for case, small_prob in SMALL_TIERS.items():
            seen: dict[str, list[tuple[str, dict[str, Any]]]] = {name: [] for name in engines}
            with ExitStack() as stack:
                urls = {}
                for name in engines:
                    behaviour = FixedBehaviour(model=name, token_prob=0.9 if name == last else small_prob)
                    app = recording(create_fixed_upstream_app(behaviour), seen[name])
                    urls[name] = stack.enter_context(BackgroundServer(app)).url + "/v1"
                log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="kascade-vllm-contract-"))
                config = _router_config_for_loopback(rendered_router_config(cascade), urls, log_dir)
                router = stack.enter_context(BackgroundServer(create_router_app(config)))
                for label, (path, body) in CALLER_BODIES.items():
                    response = httpx.post(router.url + path, json={"model": cascade.metadata.name, **body}, timeout=30)
                    if response.status_code != 200:
                        raise RuntimeError(
                            f"{example}, {case} tiers, {label}: the router answered "
                            f"{response.status_code}: {response.text[:300]}"
                        )
                _settled(lambda seen=seen: sum(map(len, seen.values())))
            calls += [
                Call(example, case, name, engines[name], path, body) for name in engines for path, body in seen[name]
            ]
    return calls


class _TeacherTokenizer:
    """The student's tokenizer as `TeacherServer` needs it: token id n is spelt `t<n>`, as the teacher spells it."""

    def decode(self, ids: list[int]) -> str:
        return f"t{ids[0]}"


def _teacher_app(seen: list[tuple[str, dict[str, Any]]], answers: list[dict[str, Any]]) -> Any:
    """A teacher server answering prompt_logprobs as `kascade serve` writes them (the engines' vLLM layout)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        positions = [None] + [{token: (-0.25, 1, f"t{token}")} for token in body["prompt"][1:]]
        answer = layout.text_completion(
            layout.ResponseHeader("cmpl-teacher", 0, body["model"]),
            "t1",
            logprobs=None,
            finish_reason="length",
            stop_reason=None,
            token_usage=layout.usage(len(body["prompt"]), 1),
        )
        answer["choices"][0]["prompt_logprobs"] = layout.prompt_logprobs(positions)
        answers.append(answer)
        return JSONResponse(answer)

    return recording(Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])]), seen)


def teacher_calls(top_k: int) -> tuple[list[Call], list[dict[str, Any]]]:
    """The on-policy teacher calls of `kascade distill` (its own client) to each example's last tier, and the
    teacher's answers; `top_k` is what the distillation Job asks for (`kascade distill`'s default)."""
    from kascade.distillation.batches import EncodedLm
    from kascade.distillation.teacher_server import TeacherServer

    calls, answers = [], []
    for example, cascade in vllm_cascades():
        teacher = cascade.spec.tiers[-1]
        if teacher.engine is not EngineKind.vllm or cascade.spec.distillation is None:
            continue
        seen: list[tuple[str, dict[str, Any]]] = []
        with BackgroundServer(_teacher_app(seen, answers)) as server:
            client = TeacherServer(
                server.url + "/v1", teacher.served_name, top_k=top_k, student_tokenizer=_TeacherTokenizer()
            )
            client.signals([EncodedLm(prompt=[11, 12, 13], answer=[21, 22], signal=None)])
            client.close()
        calls += [Call(example, "on-policy teacher", teacher.name, teacher.engine, path, body) for path, body in seen]
    return calls, answers


def upstream_answers() -> dict[str, dict[str, Any]]:
    """The fixed test upstream's answers (whole, and each stream's chunks by position), named for the report."""
    asked = {
        "chat": ("/v1/chat/completions", {"messages": CHAT}),
        "chat with logprobs": ("/v1/chat/completions", {"messages": CHAT, "logprobs": True, "top_logprobs": 2}),
        "chat with token ids": (
            "/v1/chat/completions",
            {"messages": CHAT, "logprobs": True, "top_logprobs": 2, "return_tokens_as_token_ids": True},
        ),
        "completion": ("/v1/completions", {"prompt": "hi"}),
        "completion with logprobs": ("/v1/completions", {"prompt": "hi", "logprobs": 2}),
        "completion with token ids": (
            "/v1/completions",
            {"prompt": "hi", "logprobs": 2, "return_tokens_as_token_ids": True},
        ),
        "chat stream": (
            "/v1/chat/completions",
            {
                "messages": CHAT,
                "logprobs": True,
                "top_logprobs": 2,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ),
        "completion stream": (
            "/v1/completions",
            {"prompt": "hi", "logprobs": 2, "stream": True, "stream_options": {"include_usage": True}},
        ),
        "classify": ("/classify", {"input": ["good"]}),
    }
    answers = {}
    with BackgroundServer(create_fixed_upstream_app(FixedBehaviour())) as upstream:
        for name, (path, body) in asked.items():
            response = httpx.post(upstream.url + path, json={"model": "fixed", **body}, timeout=30)
            response.raise_for_status()
            if not body.get("stream"):
                answers[name] = response.json()
                continue
            events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
            for index, event in enumerate(event for event in events if event != "[DONE]"):
                answers[f"{name} chunk {index}"] = json.loads(event)
    return answers


# -- the checks, against vLLM ----------------------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.passed = self.failed = 0

    def check(self, name: str, problem: str | None) -> None:
        if problem is None:
            self.passed += 1
            print(f"PASS {name}")
        else:
            self.failed += 1
            print(f"FAIL {name}: {problem}")

    @staticmethod
    def note(text: str) -> None:
        print(f"NOTE {text}")


def ignored_fields(model: Any, where: str = "") -> list[str]:
    """Fields vLLM accepted but has no place for (pydantic's `model_extra`), at any depth, as paths."""
    from pydantic import BaseModel

    found = []
    if isinstance(model, BaseModel):
        found += [f"{where}{key}" for key in (model.model_extra or {})]
        for name in type(model).model_fields:  # read from __dict__: a deprecated field warns when read by name
            found += ignored_fields(model.__dict__.get(name), f"{where}{name}.")
    elif isinstance(model, list | tuple):
        for index, item in enumerate(model):
            found += ignored_fields(item, f"{where.rstrip('.')}[{index}].")
    elif isinstance(model, dict):
        for key, item in model.items():
            found += ignored_fields(item, f"{where}{key}.")
    return found


def _problem(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:600]


def _platform_for_parsing(report: Report) -> None:
    """vLLM's parser needs a device platform to build its defaults, and with no GPU it fails to infer one.
    vLLM's own CLI falls back to its CPU platform for commands that need no GPU (`vllm bench`): so does this
    check, and says so. The flags are the same on every platform; a few defaults are not (none checked here)."""
    from vllm import platforms

    if not platforms.current_platform.is_unspecified():
        return
    try:
        _serve_parser("module")
    except RuntimeError as error:
        from vllm.platforms.cpu import CpuPlatform

        report.note(
            f"vLLM's `vllm serve` parser cannot be built without a GPU ({_problem(error)}); "
            "the args are parsed with vLLM's CPU platform instead, as `vllm bench` does"
        )
        platforms.current_platform = CpuPlatform()


def _serve_parser(kind: str) -> Any:
    """The parser `vllm serve` (kind "serve") or the API server module (kind "module") parses its args with."""
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    if kind == "module":
        return make_arg_parser(FlexibleArgumentParser(description="vLLM OpenAI-Compatible RESTful API server."))
    from vllm.entrypoints.cli.serve import cmd_init

    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    for command in cmd_init():
        command.subparser_init(subparsers)
    return parser


def _parse_serve_args(command: list[str], args: list[str]) -> Any:
    """The namespace vLLM's entrypoint makes of `command args`, after its own checks; raises what it raises."""
    import contextlib
    import io

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.common.cli_args import validate_parsed_serve_args

    if command and Path(command[0]).name == "vllm":  # the CLI: `vllm serve [MODEL] ARGS`
        argv, parser = [*command[1:], *args], _serve_parser("serve")
    elif command[-2:] == ["-m", "vllm.entrypoints.openai.api_server"]:
        argv, parser = list(args), _serve_parser("module")
    else:
        raise ValueError(f"{' '.join(command)!r} is no vLLM entrypoint this check knows")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parsed = parser.parse_args(argv)
    except SystemExit:
        raise ValueError(stderr.getvalue().strip().splitlines()[-1]) from None
    if getattr(parsed, "model_tag", None):  # `vllm serve MODEL`, as its cmd() does
        parsed.model = parsed.model_tag
    validate_parsed_serve_args(parsed)
    AsyncEngineArgs.from_cli_args(parsed)
    return parsed


def check_serve_args(report: Report) -> dict[tuple[str, str], int]:
    """Check 2; the `--max-logprobs` each vllm tier runs with, by (example, tier), for check 1."""
    max_logprobs = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if ENGINE_COMMAND[-2:-1] == ("-m",):  # a module vLLM deprecates warns when it is imported
            importlib.import_module(ENGINE_COMMAND[-1])
    deprecated = [str(warning.message) for warning in caught if issubclass(warning.category, DeprecationWarning)]
    report.check(
        f"engine command `{' '.join(ENGINE_COMMAND)}` is a current vLLM entrypoint",
        f"vLLM says: {' '.join(deprecated[0].split())}" if deprecated else None,
    )
    _platform_for_parsing(report)
    for example, cascade, tier_name in serve_targets():
        tier = next(tier for tier in cascade.spec.tiers if tier.name == tier_name)
        deployment = next(
            child
            for child in build_children(cascade, OperatorSettings())
            if child["kind"] == "Deployment" and child["metadata"]["name"] == f"{cascade.metadata.name}-{tier.name}"
        )
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        name = f"serve args {example} tier {tier.name}: {' '.join(container['args'])}"
        try:
            parsed = _parse_serve_args(container["command"], container["args"])
        except Exception as error:  # whatever vLLM raises is the finding
            report.check(name, _problem(error))
            continue
        meant = {"served_model_name": [tier.served_name], "port": OperatorSettings().engine_port}
        wrong = {key: getattr(parsed, key) for key, value in meant.items() if getattr(parsed, key) != value}
        report.check(name, f"vLLM read {wrong}, the operator meant {meant}" if wrong else None)
        max_logprobs.setdefault((example, tier.name), parsed.max_logprobs)
    return max_logprobs


class _ModelLimits:
    """What `SamplingParams` checks logprob counts against: the tier's `--max-logprobs` (a vocabulary is
    only needed for -1, which Kascade never asks for)."""

    def __init__(self, max_logprobs: int) -> None:
        self.max_logprobs = max_logprobs

    def get_vocab_size(self) -> int:
        return 1 << 20


def check_request(call: Call, max_logprobs: int) -> str | None:
    """None when vLLM takes `call.body` whole, or what it refuses or would ignore."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.pooling.classify.protocol import ClassificationCompletionRequest

    models = {
        "/v1/chat/completions": ChatCompletionRequest,
        "/v1/completions": CompletionRequest,
        "/classify": ClassificationCompletionRequest,
    }
    try:
        request = models[call.path].model_validate(call.body)
    except Exception as error:  # a refused body is the finding
        return f"vLLM refuses it: {_problem(error)}"
    ignored = ignored_fields(request)
    if ignored:
        return f"vLLM ignores {', '.join(ignored)}"
    if call.path == "/classify":
        return None
    try:
        request.to_sampling_params(max_tokens=16, default_sampling_params={})._validate_logprobs(
            _ModelLimits(max_logprobs)
        )
    except Exception as error:
        return f"vLLM refuses it with --max-logprobs {max_logprobs}: {_problem(error)}"
    return None


def check_requests(report: Report, calls: list[Call], max_logprobs: dict[tuple[str, str], int]) -> None:
    """Check 1: one line per distinct body a vllm tier got."""
    done = set()
    for call in calls:
        if call.engine is not EngineKind.vllm:
            continue
        shape = json.dumps(call.body, sort_keys=True)
        if (call.example, call.tier, call.path, shape) in done:
            continue
        done.add((call.example, call.tier, call.path, shape))
        fields = {key: value for key, value in call.body.items() if key not in ("messages", "prompt", "model")}
        name = f"request {call.example} tier {call.tier} ({call.case}) {call.path} {json.dumps(fields)}"
        report.check(name, check_request(call, max_logprobs.get((call.example, call.tier), 20)))


def check_responses(report: Report, answers: dict[str, dict[str, Any]]) -> None:
    """Check 3: each answer against vLLM's response type for it."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse, ChatCompletionStreamResponse
    from vllm.entrypoints.openai.completion.protocol import CompletionResponse, CompletionStreamResponse
    from vllm.entrypoints.pooling.classify.protocol import ClassificationResponse

    types = {
        "chat.completion": ChatCompletionResponse,
        "chat.completion.chunk": ChatCompletionStreamResponse,
        "list": ClassificationResponse,
    }
    for name, answer in answers.items():
        kind = types.get(answer.get("object"))
        if kind is None:
            kind = CompletionStreamResponse if " chunk " in name else CompletionResponse
        try:
            ignored = ignored_fields(kind.model_validate(answer))
            problem = f"vLLM has no field {', '.join(ignored)}" if ignored else None
        except Exception as error:
            problem = f"not vLLM's layout: {_problem(error)}"
        report.check(f"response {name} as vLLM's {kind.__name__}", problem)


def main() -> int:
    report = Report()
    try:
        import vllm
    except Exception as error:  # say exactly what fails; nothing below can run without it
        report.check("import vllm", _problem(error))
        print(f"{report.passed} passed, {report.failed} failed")
        return 1
    print(f"vllm {vllm.__version__} from {Path(vllm.__file__).parent}")
    from kascade.api.loop import Training

    # Each part runs even when another cannot (a part of vLLM that does not import here): its failure is a line.
    max_logprobs: dict[tuple[str, str], int] = {}
    try:
        max_logprobs = check_serve_args(report)
    except Exception as error:
        report.check("serve args (vLLM's parser)", _problem(error))
    calls, teacher_answers = teacher_calls(Training.model_fields["teacher_top_k"].default)
    try:
        check_requests(report, router_calls() + calls, max_logprobs)
    except ImportError as error:
        report.check("requests (vLLM's request models)", _problem(error))
    answers = upstream_answers()
    answers |= {f"on-policy teacher's prompt_logprobs {index}": answer for index, answer in enumerate(teacher_answers)}
    try:
        check_responses(report, answers)
    except ImportError as error:
        report.check("responses (vLLM's response models)", _problem(error))
    print(f"{report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
