"""Where a pod writes a resource's status: the in-cluster API server, the mounted CA, the token when there is one."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest

from kascade.runtime.cluster_status.report import StatusReportConfig


def _self_signed_ca(path: Path) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_in_a_pod_the_api_server_comes_from_the_service_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    config = StatusReportConfig(namespace="team-a", name="chat")
    assert (
        config.status_url()
        == "https://10.0.0.1:6443/apis/kascade.dev/v1alpha1/namespaces/team-a/modelcascades/chat/status"
    )


def test_the_mounted_ca_is_trusted_and_a_missing_one_leaves_the_systems(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    ca = _self_signed_ca(tmp_path / "ca.crt")
    verify = StatusReportConfig(namespace="ns", name="n", ca_file=str(ca)).tls_verify()
    assert isinstance(verify, ssl.SSLContext)
    assert [cert["subject"] for cert in verify.get_ca_certs()] == [((("commonName", "kubernetes-ca"),),)]
    assert StatusReportConfig(namespace="ns", name="n", ca_file=str(tmp_path / "none")).tls_verify() is True


def test_the_token_is_sent_when_mounted_and_read_again_each_time(tmp_path: Path) -> None:
    token = tmp_path / "token"
    config = StatusReportConfig(namespace="ns", name="n", token_file=str(token))
    assert "Authorization" not in config.merge_patch_headers("kascade-router")
    token.write_text("first\n")
    assert config.merge_patch_headers("kascade-router")["Authorization"] == "Bearer first"
    token.write_text("rotated\n")
    assert config.merge_patch_headers("kascade-router") == {
        "Content-Type": "application/merge-patch+json",
        "User-Agent": "kascade-router",
        "Authorization": "Bearer rotated",
    }
