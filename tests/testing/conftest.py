"""Shared fixtures of the stand-in's tests: one stand-in per module, with Kascade's CRDs, and an HTTP client on it.

A module that needs another stand-in (other options, a fresh one per test) defines its own `server`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kascade.testing import StandinApiServer

CRDS = Path(__file__).resolve().parents[2] / "crds"


@pytest.fixture(scope="module")
def server() -> Iterator[StandinApiServer]:
    with StandinApiServer(crd_paths=[CRDS]) as running:
        yield running


@pytest.fixture
def api(server: StandinApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client
