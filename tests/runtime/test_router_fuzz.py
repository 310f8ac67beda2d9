"""Property: whatever body a client sends, the router answers with a status below 500 and an
OpenAI-style error when it refuses. The tiers behind it are healthy, so a 5xx would be the
router's own fault."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
field_values = {
    "model": st.sampled_from(["demo", "other"]) | json_values,
    "messages": st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": st.text(max_size=30)}),
        max_size=3,
    )
    | json_values,
    "prompt": st.text(max_size=30) | json_values,
    "input": st.text(max_size=30) | st.lists(st.text(max_size=10), max_size=3) | json_values,
    "stream": st.booleans() | json_values,
    "logprobs": st.booleans() | st.integers(-2, 30) | json_values,
    "top_logprobs": st.integers(-2, 30) | json_values,
    "max_tokens": st.integers(-2, 100) | json_values,
    "temperature": st.floats(-1, 3) | json_values,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | json_values,
    "n": st.integers(-1, 3) | json_values,
}
bodies = st.fixed_dictionaries({}, optional=field_values)
raw_bodies = st.binary(max_size=64) | bodies.map(lambda body: json.dumps(body).encode())


@pytest.fixture
def router_url(start_upstream, start_router, two_tier_config) -> str:
    small = start_upstream(token_prob=0.6)
    large = start_upstream()
    return start_router(two_tier_config(small.url, large.url)).url


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/classify"]), body=raw_bodies)
def test_no_body_makes_the_router_fail(router_url, path, body):
    # One router serves every example: the fixture is built once per test, not per example.
    response = httpx.post(f"{router_url}{path}", content=body, headers={"content-type": "application/json"})

    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["error"]["message"], str)
