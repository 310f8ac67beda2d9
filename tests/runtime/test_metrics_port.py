"""/metrics and /stats answer on the router's metrics port only: the API port, which clients reach, has neither."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from kascade.runtime.router import run_router
from kascade.runtime.serving import free_port

pytestmark = pytest.mark.slow  # real servers on loopback

CHAT = [{"role": "user", "content": "Say hello"}]


def test_the_api_port_has_no_stats_or_metrics_and_the_metrics_port_has_both(
    start_upstream, start_router, two_tier_config
):
    small = start_upstream(token_prob=0.9)
    large = start_upstream()
    router = start_router(two_tier_config(small.url, large.url))
    openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0).chat.completions.create(
        model="demo", messages=CHAT
    )

    for path in ("/stats", "/metrics"):
        refused = httpx.get(f"{router.url}{path}")
        assert refused.status_code == 404 and refused.json()["error"]["code"] == 404
    assert httpx.get(f"{router.metrics_url}/stats").json()["requests"] == 1
    assert (
        'kascade_requests_total{answered_by="small",cascade="demo"} 1.0'
        in httpx.get(f"{router.metrics_url}/metrics").text
    )
    assert httpx.get(f"{router.url}/healthz").status_code == 200
    assert httpx.get(f"{router.url}/readyz").status_code == 200


def test_the_metrics_port_serves_nothing_of_the_api(start_upstream, start_router, two_tier_config):
    router = start_router(two_tier_config(start_upstream().url, start_upstream().url))
    asked = httpx.post(f"{router.metrics_url}/v1/chat/completions", json={"model": "demo", "messages": CHAT})
    assert asked.status_code == 404 and "metrics port" in asked.json()["error"]["message"]
    assert httpx.get(f"{router.metrics_url}/healthz").status_code == 404
    assert httpx.post(f"{router.metrics_url}/stats").status_code == 405


def test_client_keys_guard_the_api_and_the_stats_are_not_on_its_port(
    start_upstream, start_router, two_tier_config, monkeypatch
):
    monkeypatch.setenv("TEST_ROUTER_KEYS", "k1")
    router = start_router(
        two_tier_config(start_upstream(token_prob=0.9).url, start_upstream().url, api_keys_env="TEST_ROUTER_KEYS")
    )
    assert httpx.get(f"{router.url}/stats").status_code == 404  # not 401: there is nothing to unlock
    assert httpx.get(f"{router.url}/stats", headers={"authorization": "Bearer k1"}).status_code == 404
    assert httpx.get(f"{router.metrics_url}/stats").json()["requests"] == 0  # the scraper's port, closed by policy


def _router_yaml(tmp_path: Path, upstream_url: str, metrics_port: int) -> Path:
    config = tmp_path / "router.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cascade": "demo",
                "metrics_port": metrics_port,
                "tiers": [
                    {"name": "small", "served_model": "small", "url": upstream_url, "accept": {"threshold": 0.5}},
                    {"name": "large", "served_model": "large", "url": upstream_url},
                ],
            }
        )
    )
    return config


def test_kascade_route_listens_on_its_port_and_on_the_configs_metrics_port(tmp_path: Path, start_upstream):
    port, metrics_port = free_port(), free_port()
    config = _router_yaml(tmp_path, start_upstream(token_prob=0.9).url, metrics_port)
    command = [sys.executable, "-m", "kascade", "route", "--config", str(config), "--port", str(port)]
    process = subprocess.Popen([*command, "--host", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout and process.stdout.read()
                time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/stats").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/stats").json()["cascade"] == "demo"
        assert "kascade_requests_total" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    finally:
        process.terminate()
        # One server for both ports: SIGTERM stops it (uvicorn re-raises the signal once it has shut down).
        assert process.wait(timeout=30) == -signal.SIGTERM


def test_kascade_route_refuses_an_api_port_that_is_the_metrics_port(tmp_path: Path, capsys):
    config = _router_yaml(tmp_path, "http://127.0.0.1:9/v1", metrics_port=9191)
    assert run_router(config_path=config, port=9191, host="127.0.0.1") == 2
    assert "metrics_port" in capsys.readouterr().out
