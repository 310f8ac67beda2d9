"""Fixtures shared by the operator tests that talk to the API-server stand-in."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def credentials(server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The operator's credentials for the test module's own `server` (a `StandinApiServer` fixture)."""
    from kascade.operator.kube_credentials import Credentials

    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return Credentials.from_environment()
