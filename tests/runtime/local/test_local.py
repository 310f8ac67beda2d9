"""Local mode (`kascade up`): a ModelCascade manifest run on this machine, tiers in-process.

The tiers are the tiny random models of tests/conftest.py; the real packaged
models are never loaded here (docs/local-mode.md has the measured real run).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import APIConnectionError, OpenAI
from rich.console import Console

from kascade.api.loop import Calibration
from kascade.api.modelcascade import ModelCascade, SecretKeyRef
from kascade.runtime.local.manifest import LocalModeError, load_manifest, secret_env_var
from kascade.runtime.local.mode import run_local
from kascade.runtime.local.tiers import LocalTiers, build_router_config, serve_cascade
from kascade.runtime.serving import free_port

REPO_ROOT = Path(__file__).resolve().parents[3]


def manifest(tiers: list[dict[str, Any]], *, name: str = "tiny-cascade", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kascade.dev/v1alpha1",
        "kind": "ModelCascade",
        "metadata": {"name": name},
        "spec": {"task": "chat", "tiers": tiers, **spec},
    }


def transformers_tier(name: str, path: Path, *, threshold: float | None = None, price: float = 1.0) -> dict[str, Any]:
    tier: dict[str, Any] = {
        "name": name,
        "engine": "transformers",
        "model": {"uri": str(path), "servedName": f"{name}-model"},
        "price": {"inputPerMillion": price, "outputPerMillion": 2 * price},
    }
    if threshold is not None:
        tier["accept"] = {"method": "geometricMean", "threshold": threshold}
    return tier


@pytest.fixture
def write_manifest(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    def write(document: dict[str, Any]) -> Path:
        path = tmp_path / "cascade.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    return write


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def ask(client: OpenAI, model: str, prompt: str) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=8, temperature=0
    )


@pytest.mark.parametrize(
    ("threshold", "answering_tier", "escalated"),
    [(0.0, "small", "false"), (1.0, "large", "true")],
    ids=["small-accepts", "escalates-to-large"],
)
def test_two_in_process_tiers_answer_through_the_openai_client(
    tiny_small_lm_dir: Path,
    tiny_large_lm_dir: Path,
    tmp_path: Path,
    threshold: float,
    answering_tier: str,
    escalated: str,
) -> None:
    cascade = ModelCascade.model_validate(
        manifest(
            [
                transformers_tier("small", tiny_small_lm_dir, threshold=threshold, price=1.0),
                transformers_tier("large", tiny_large_lm_dir, price=10.0),
            ]
        )
    )
    with serve_cascade(cascade, host="127.0.0.1", port=free_port(), cache_dir=tmp_path, console=quiet()) as router:
        client = OpenAI(base_url=f"{router.url}/v1", api_key="local", max_retries=0)
        for prompt in ("Hello!", "What is the capital of France?"):
            raw = ask(client, "tiny-cascade", prompt)
            assert raw.headers["x-kascade-tier"] == answering_tier
            assert raw.headers["x-kascade-escalated"] == escalated
            assert raw.parse().model == f"{answering_tier}-model"
        stats = httpx.get(f"{router.metrics_url}/stats").json()

    assert stats["requests"] == 2
    assert stats["answeredBy"].get(answering_tier) == 2
    assert stats["escalations"] == (2 if escalated == "true" else 0)
    assert stats["tiers"]["small"]["calls"] == 2
    assert stats["cost"]["actual"] > 0


def test_an_external_tier_gets_its_key_from_the_secret_stand_in(
    tiny_small_lm_dir: Path, tmp_path: Path, start_upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = start_upstream(model="hosted-large", tokens=["Paris", "."])
    monkeypatch.setenv("OPENAI_KEY_API_KEY", "sk-local-test")
    cascade = ModelCascade.model_validate(
        manifest(
            [
                transformers_tier("small", tiny_small_lm_dir, threshold=1.0),
                {
                    "name": "hosted",
                    "engine": "external",
                    "model": {"uri": upstream.url},
                    "apiKeySecret": {"name": "openai-key", "key": "api-key"},
                },
            ]
        )
    )
    assert (
        build_router_config(
            cascade,
            LocalTiers(urls={"small": None, "hosted": upstream.url}, api_key_envs={"hosted": "OPENAI_KEY_API_KEY"}),
        )
        .tiers[1]
        .read_api_key()
        == "sk-local-test"
    )
    online = cascade.model_copy(
        update={
            "spec": cascade.spec.model_copy(
                update={"calibration": Calibration(min_agreement=0.9, shadow_sample_rate=0.1)}
            )
        }
    )
    sampling = build_router_config(online, LocalTiers(urls={"small": None, "hosted": upstream.url})).shadow_sampling
    assert sampling is not None and sampling.calibrate_in_process is not None  # local mode calibrates in process
    with serve_cascade(cascade, host="127.0.0.1", port=free_port(), cache_dir=tmp_path, console=quiet()) as router:
        raw = ask(
            OpenAI(base_url=f"{router.url}/v1", api_key="local", max_retries=0), "tiny-cascade", "Capital of France?"
        )
        assert raw.headers["x-kascade-tier"] == "hosted"
        assert raw.parse().choices[0].message.content == "Paris."
    assert upstream.behaviour.requests == 1


def test_secret_stand_in_names() -> None:
    assert secret_env_var(SecretKeyRef(name="openai-key", key="api-key")) == "OPENAI_KEY_API_KEY"
    assert secret_env_var(SecretKeyRef(name="hf.token", key="token")) == "HF_TOKEN_TOKEN"


def test_demo_run_prints_each_answer_and_the_savings(
    tiny_small_lm_dir: Path, tiny_large_lm_dir: Path, tmp_path: Path, write_manifest, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_manifest(
        manifest(
            [
                transformers_tier("small", tiny_small_lm_dir, threshold=0.0, price=1.0),
                transformers_tier("large", tiny_large_lm_dir, price=10.0),
            ]
        )
    )
    code = run_local(manifest=path, port=free_port(), host="127.0.0.1", demo=True, cache_dir=tmp_path)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "What is the capital of France?" in out
    assert "→ tier small" in out
    assert "answered by small" in out and "saved" in out
    assert "Traceback" not in out


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("started_from", [None, _ignore_sigint], ids=["from-a-terminal", "from-a-background-job"])
def test_the_router_keeps_serving_until_interrupted(
    tiny_small_lm_dir: Path,
    tiny_large_lm_dir: Path,
    tmp_path: Path,
    write_manifest,
    started_from: Callable[[], None] | None,
) -> None:
    """`kascade up` without --demo serves until Ctrl-C, then stops cleanly with exit code 0.

    A background job (`nohup … &`) inherits SIGINT as ignored; `kascade up` still stops on it.
    """
    path = write_manifest(
        manifest(
            [
                transformers_tier("small", tiny_small_lm_dir, threshold=0.0),
                transformers_tier("large", tiny_large_lm_dir),
            ]
        )
    )
    port, metrics_port = free_port(), free_port()
    command = [sys.executable, "-m", "kascade", "up", "-f", str(path), "--port", str(port)]
    command += ["--metrics-port", str(metrics_port)]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=started_from
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        stats = None
        for _ in range(1200):  # up to ~2 minutes on a busy machine
            with contextlib.suppress(httpx.HTTPError, APIConnectionError):
                response = ask(
                    OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0), "tiny-cascade", "Hi"
                )
                assert response.headers["x-kascade-tier"] == "small"
                stats = httpx.get(f"http://127.0.0.1:{metrics_port}/stats").json()
                break
            if process.poll() is not None:
                break
            threading.Event().wait(0.1)
        assert stats is not None, "".join(output)
        assert stats["answeredBy"]["small"] == 1
    except Exception:
        process.kill()
        raise
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()  # Ctrl-C did not stop it: fail, but leave no server behind
            raise
        reader.join(timeout=5)
    text = "".join(output)
    assert code == 0, text
    assert "answered by small" in text
    assert "Traceback" not in text


def test_an_invalid_manifest_exits_2_with_the_field_paths(
    tiny_small_lm_dir: Path, write_manifest, capsys: pytest.CaptureFixture[str]
) -> None:
    document = manifest(
        [
            transformers_tier("small", tiny_small_lm_dir, threshold=0.5),
            {**transformers_tier("Large_Tier", tiny_small_lm_dir), "price": {"inputPerMillion": -1}},
        ]
    )
    document["spec"]["tiers"][0]["accept"]["treshold"] = 0.4
    code = run_local(manifest=write_manifest(document), port=free_port(), host="127.0.0.1", demo=False, cache_dir=None)
    out = capsys.readouterr().out
    assert code == 2
    assert "is not a valid ModelCascade" in out
    assert "spec.tiers[1].name" in out
    assert "spec.tiers[1].price.inputPerMillion" in out
    assert "spec.tiers[0].accept.treshold: Extra inputs are not permitted" in out
    assert "Traceback" not in out


@pytest.mark.slow  # takes a loopback port
def test_a_cross_field_rule_is_reported_in_words(write_manifest, capsys: pytest.CaptureFixture[str]) -> None:
    document = manifest([transformers_tier("small", Path("/x")), transformers_tier("large", Path("/y"))])
    code = run_local(manifest=write_manifest(document), port=free_port(), host="127.0.0.1", demo=False, cache_dir=None)
    out = capsys.readouterr().out
    assert code == 2
    assert "tier 'small' is not the last tier and needs an accept rule" in out


@pytest.mark.slow  # starts the command
def test_the_cli_reports_a_bad_manifest_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: kascade.dev/v1alpha1\nkind: ModelCascade\nmetadata: {name: x}\nspec: {tiers: []}\n")
    done = subprocess.run(
        [sys.executable, "-m", "kascade", "up", "-f", str(bad)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "spec.tiers" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "kascade", "up", "-f", str(tmp_path / "absent.yaml")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 2
    assert "no manifest at" in missing.stdout


def test_vllm_tiers_need_vllm(
    tiny_small_lm_dir: Path, write_manifest, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    document = manifest(
        [
            {**transformers_tier("small", tiny_small_lm_dir, threshold=0.5), "engine": "vllm"},
            transformers_tier("large", tiny_small_lm_dir),
        ]
    )
    code = run_local(manifest=write_manifest(document), port=free_port(), host="127.0.0.1", demo=False, cache_dir=None)
    out = capsys.readouterr().out
    assert code == 2
    assert "vLLM is not installed here" in out
    assert "engine: transformers" in out


def test_a_missing_secret_names_the_variable_to_set(
    tiny_small_lm_dir: Path, write_manifest, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_KEY_API_KEY", raising=False)
    document = manifest(
        [
            transformers_tier("small", tiny_small_lm_dir, threshold=0.5),
            {
                "name": "hosted",
                "engine": "external",
                "model": {"uri": "https://api.openai.com/v1"},
                "apiKeySecret": {"name": "openai-key", "key": "api-key"},
            },
        ]
    )
    code = run_local(manifest=write_manifest(document), port=free_port(), host="127.0.0.1", demo=False, cache_dir=None)
    out = capsys.readouterr().out
    assert code == 2
    assert "export OPENAI_KEY_API_KEY=" in out


@pytest.mark.slow  # takes a loopback port
def test_cluster_only_model_uris_are_refused_before_loading(write_manifest, capsys) -> None:
    document = manifest(
        [
            {**transformers_tier("small", Path("/x"), threshold=0.5), "model": {"uri": "pvc://models/small"}},
            transformers_tier("large", Path("/y")),
        ]
    )
    code = run_local(manifest=write_manifest(document), port=free_port(), host="127.0.0.1", demo=False, cache_dir=None)
    assert code == 2
    assert "lives in the cluster" in capsys.readouterr().out


@pytest.mark.slow  # takes a loopback port
def test_scheduled_distillation_is_refused_in_local_mode(write_manifest, capsys) -> None:
    document = manifest([transformers_tier("small", Path("/x"), threshold=0.5), transformers_tier("large", Path("/y"))])
    document["spec"]["escalationLog"] = {"enabled": True, "uri": "/tmp/escalations"}
    document["spec"]["distillation"] = {"outputUri": "pvc://students/chat"}
    code = run_local(manifest=write_manifest(document), port=free_port(), host="127.0.0.1", demo=False, cache_dir=None)
    assert code == 2
    assert "spec.distillation runs in a cluster" in capsys.readouterr().out


def test_a_busy_port_is_reported(tiny_small_lm_dir: Path, write_manifest, capsys) -> None:
    import socket

    document = manifest([transformers_tier("only", tiny_small_lm_dir)])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = run_local(manifest=write_manifest(document), port=port, host="127.0.0.1", demo=False, cache_dir=None)
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().out


def test_the_embedded_default_is_the_published_example() -> None:
    embedded = REPO_ROOT / "runtime" / "local" / "demo.yaml"
    example = REPO_ROOT / "examples" / "local-demo.yaml"
    assert embedded.read_text() == example.read_text()
    cascade = load_manifest(None)
    assert cascade == load_manifest(example)
    tiers = cascade.spec.tiers
    assert [tier.engine.value for tier in tiers] == ["transformers", "transformers"]
    assert tiers[0].model.uri.startswith("pkg://") and tiers[-1].model.uri.startswith("pkg://")
    assert tiers[0].accept is not None and tiers[-1].accept is None
    assert tiers[-1].price.output_per_million >= 5 * tiers[0].price.output_per_million


def test_a_file_with_no_cascade_is_refused(write_manifest) -> None:
    path = write_manifest({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}})
    with pytest.raises(LocalModeError, match="exactly one document of kind ModelCascade"):
        load_manifest(path)
