"""The handlers under Kopf's own runner (`kopf.testing.KopfRunner`, Kopf's CLI in a thread), and the CLI around it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

kopf = pytest.importorskip("kopf")
pytest.importorskip("kmock")

from kopf.testing import KopfRunner

from kascade.operator.main import HANDLERS_MODULE, kopf_run_args
from kascade.testing import StandinApiServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandinApiServer]:
    import kubernetes.config.kube_config

    with StandinApiServer(crd_paths=[REPO / "crds"], controller_delay=0.01) as running:
        # Kopf logs in through the kubernetes package, which read $KUBECONFIG when it was imported.
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(running.kubeconfig_path))
        monkeypatch.setenv("KUBECONFIG", str(running.kubeconfig_path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield running


def wait_for(condition, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


@pytest.mark.slow  # Kopf against the API-server stand-in
def test_kopf_runs_the_handlers_to_ready_and_reports_a_conflict(server: StandinApiServer):
    """Under Kopf's runner: a cascade becomes Ready; another whose router name is taken is Degraded, untouched."""
    server.add_node("gpu-l4", labels={"nvidia.com/gpu.product": "NVIDIA-L4"})
    server.add_node("gpu-h100", labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
    for name, key in (("hf-token", "token"), ("chat-client-keys", "keys")):
        server.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {key: "x"}})
    server.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "blocked-router"},
            "spec": {"ports": [{"port": 80}]},
        }
    )
    body = yaml.safe_load((REPO / "examples" / "chat-vllm-gpu.yaml").read_text())

    args = ["run", "--standalone", "--namespace", "default", "-m", HANDLERS_MODULE, "--verbose"]
    with KopfRunner(args, timeout=30) as runner:
        for name in ("fine", "blocked"):
            server.create({**body, "metadata": {"name": name, "namespace": "default"}})

        def condition(name: str, type_: str) -> dict:
            status = (server.get("modelcascades", name, "default") or {}).get("status") or {}
            return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})

        wait_for(lambda: condition("blocked", "Degraded").get("reason") == "NameConflict")
        # `fine` is created at once; readiness waits for the next reconcile (the timer, or here: a spec change).
        wait_for(lambda: server.get("deployments", "fine-router", "default") is not None)
        server.patch("modelcascades", "fine", {"spec": {"router": {"timeoutSeconds": 90}}})
        wait_for(lambda: condition("fine", "Ready").get("status") == "True")

    assert runner.exception is None
    assert runner.exit_code == 0
    assert 'Service "blocked-router" already exists' in condition("blocked", "Degraded")["message"]
    assert [d["metadata"]["name"] for d in server.objects("deployments", "default")] == [
        "fine-large",
        "fine-router",
        "fine-small",
    ]
    assert server.get("services", "blocked-router", "default")["metadata"].get("labels") is None
    cascade = server.get("modelcascades", "fine", "default")
    assert not cascade["metadata"].get("finalizers")  # nothing to do on deletion: no finalizer to wait for
    assert "kascade.dev/last-handled-configuration" in cascade["metadata"]["annotations"]
    assert "kopf" not in cascade["status"]  # kopf keeps its progress in annotations, not in the schema'd status


@pytest.mark.slow  # Kopf against the API-server stand-in
def test_the_drift_loop_needs_no_finalizer_and_an_uninstall_does_not_hang(
    server: StandinApiServer, monkeypatch: pytest.MonkeyPatch
):
    """The drift loop brings a cascade to Ready with no edit; no cascade carries a finalizer (an older operator's
    is removed), so deleting cascades after the operator is gone (uninstall: operator, then CRDs) completes."""
    monkeypatch.setenv("KASCADE_RECONCILE_INTERVAL_SECONDS", "0.2")
    server.add_node("gpu-l4", labels={"nvidia.com/gpu.product": "NVIDIA-L4"})
    server.add_node("gpu-h100", labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
    for name, key in (("hf-token", "token"), ("chat-client-keys", "keys")):
        server.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {key: "x"}})
    body = yaml.safe_load((REPO / "examples" / "chat-vllm-gpu.yaml").read_text())
    # A cascade an older operator marked with its finalizer, before this one starts.
    server.create(
        {**body, "metadata": {"name": "marked", "namespace": "default", "finalizers": ["kascade.dev/operator"]}}
    )

    def condition(name: str, type_: str) -> dict:
        status = (server.get("modelcascades", name, "default") or {}).get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})

    args = ["run", "--standalone", "--namespace", "default", "-m", HANDLERS_MODULE]
    with KopfRunner(args, timeout=30) as runner:
        server.create({**body, "metadata": {"name": "fresh", "namespace": "default"}})
        for name in ("fresh", "marked"):
            wait_for(
                lambda name=name: condition(name, "Ready").get("status") == "True"
            )  # the drift loop saw them ready
        wait_for(lambda: not server.get("modelcascades", "marked", "default")["metadata"].get("finalizers"))

    assert runner.exception is None
    assert runner.exit_code == 0
    for name in ("fresh", "marked"):
        assert not server.get("modelcascades", name, "default")["metadata"].get("finalizers")
        server.delete("modelcascades", name, namespace="default")
        wait_for(lambda name=name: server.get("modelcascades", name, "default") is None)
    wait_for(lambda: server.objects("deployments", "default") == [])  # the garbage collector took the children


# --- the CLI -------------------------------------------------------------------------------


def test_kopf_run_arguments():
    assert kopf_run_args(namespaces=["a", "b"]) == [
        "run",
        "--module",
        HANDLERS_MODULE,
        "--log-format",
        "full",
        "--namespace",
        "a",
        "--namespace",
        "b",
        "--liveness",
        "http://0.0.0.0:8080/healthz",
    ]
    assert kopf_run_args(all_namespaces=True, liveness=None, standalone=True, verbose=True) == [
        "run",
        "--module",
        HANDLERS_MODULE,
        "--log-format",
        "full",
        "--all-namespaces",
        "--standalone",
        "--verbose",
    ]
    with pytest.raises(ValueError, match="not both"):
        kopf_run_args(namespaces=["a"], all_namespaces=True)
    with pytest.raises(ValueError, match="--all-namespaces"):
        kopf_run_args()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "give the namespace(s) to watch with --namespace NS, or --all-namespaces"),
        (["-n", "a", "-A"], {}, "not both"),
        (
            ["-n", "a"],
            {"KASCADE_RECONCILE_INTERVAL_SECONDS": "often"},
            "KASCADE_RECONCILE_INTERVAL_SECONDS must be a number",
        ),
        (["-n", "a"], {"KASCADE_ROUTER_PORT": "0"}, "KASCADE_ROUTER_PORT"),
    ],
)
@pytest.mark.slow  # starts the command
def test_kascade_operator_refuses_bad_options_in_one_line(args: list[str], env: dict[str, str], message: str):
    done = subprocess.run(
        [sys.executable, "-m", "kascade", "operator", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**_clean_env(), **env},
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("KASCADE_")}
