"""`python -m kascade.testing.apiserver`: the stand-in from a shell, for manual use with kubectl."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.slow  # the stand-in's command in a process

REPO = Path(__file__).resolve().parents[2]


def test_the_cli_serves_until_terminated(tmp_path: Path):
    """The command prints its URL and kubeconfig, serves the CRDs it was given, and exits cleanly on SIGTERM."""
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kascade.testing.apiserver",
            "--port",
            "0",
            "--crds",
            str(REPO / "crds"),
            "--kubeconfig",
            str(kubeconfig),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.search(r"serving at (http://\S+)", first)
        assert match, first + (process.stdout.read() if process.poll() is not None else "")
        url = match.group(1)
        assert yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"] == url
        resources = httpx.get(f"{url}/apis/kascade.dev/v1alpha1", timeout=10).json()["resources"]
        assert {"modelcascades", "distillations"} <= {resource["name"] for resource in resources}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
