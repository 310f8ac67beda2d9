"""Fixtures for router tests: fixed-answer upstream tiers on loopback and a router in front of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from kascade.api.modelcascade import Accept, Price
from kascade.runtime.config import RouterConfig, TierConfig
from kascade.runtime.router import create_router_app
from kascade.runtime.serving import BackgroundServer
from kascade.testing.fixed_upstream import FixedBehaviour, create_fixed_upstream_app


class Upstream:
    def __init__(self, behaviour: FixedBehaviour, server: BackgroundServer) -> None:
        self.behaviour = behaviour
        self.server = server

    @property
    def url(self) -> str:
        return f"{self.server.url}/v1"


@pytest.fixture
def servers() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture
def start_upstream(servers: ExitStack) -> Callable[..., Upstream]:
    def start(**behaviour: Any) -> Upstream:
        fixed = FixedBehaviour(**behaviour)
        server = servers.enter_context(BackgroundServer(create_fixed_upstream_app(fixed)))
        return Upstream(fixed, server)

    return start


def two_tier_config(small_url: str, large_url: str, **router: Any) -> RouterConfig:
    accept = router.pop("accept", Accept(method="geometricMean", threshold=0.5))
    return RouterConfig(
        cascade=router.pop("cascade", "demo"),
        tiers=[
            TierConfig(
                name="small",
                served_model="small-model",
                url=small_url,
                accept=accept,
                price=Price(input_per_million=1.0, output_per_million=2.0),
            ),
            TierConfig(
                name="large",
                served_model="large-model",
                url=large_url,
                returns_token_ids=True,
                price=Price(input_per_million=10.0, output_per_million=20.0),
            ),
        ],
        **{"retry_backoff_seconds": 0.0, **router},
    )


@pytest.fixture(name="two_tier_config")
def two_tier_config_fixture() -> Callable[..., RouterConfig]:
    return two_tier_config


@pytest.fixture
def start_router(servers: ExitStack) -> Callable[[RouterConfig], BackgroundServer]:
    def start(config: RouterConfig, **kwargs: Any) -> BackgroundServer:
        return servers.enter_context(BackgroundServer(create_router_app(config, **kwargs)))

    return start
