"""Router replicas write their absolute counters into their own status slot, with a merge patch."""

from __future__ import annotations

import json
import time

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kascade.runtime.cluster_status.report import StatusReportConfig, replica_slot_patch
from kascade.runtime.router import create_router_app
from kascade.runtime.serving import BackgroundServer

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


def recording_api_server(patches: list[dict]) -> Starlette:
    async def patch_status(request: Request) -> JSONResponse:
        patches.append(
            {
                "path": request.url.path,
                "content_type": request.headers.get("content-type"),
                "authorization": request.headers.get("authorization"),
                "body": json.loads(await request.body()),
            }
        )
        return JSONResponse({"kind": "ModelCascade"})

    return Starlette(
        routes=[
            Route(
                "/apis/kascade.dev/v1alpha1/namespaces/{ns}/modelcascades/{name}/status",
                patch_status,
                methods=["PATCH"],
            )
        ]
    )


def test_the_slot_patch_is_absolute_and_keyed_by_process():
    snapshot = {"processId": "abc", "requests": 5}
    assert replica_slot_patch(snapshot, "router-0") == {
        "status": {"replicaCounters": {"abc": {"processId": "abc", "requests": 5, "pod": "router-0"}}}
    }


def test_a_router_reports_its_counters_and_a_final_report_on_shutdown(
    start_upstream, two_tier_config, tmp_path, monkeypatch
):
    patches: list[dict] = []
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    monkeypatch.setenv("POD_NAME", "demo-router-7f9c")
    small = start_upstream(token_prob=0.9)
    large = start_upstream()
    with BackgroundServer(recording_api_server(patches)) as api:
        report = StatusReportConfig(
            namespace="team-a",
            name="demo",
            api_server=api.url,
            token_file=str(token),
            ca_file=None,
            interval_seconds=30,
        )
        config = two_tier_config(small.url, large.url).model_copy(update={"status_report": report})
        with BackgroundServer(create_router_app(config)) as router:
            for _ in range(3):
                assert httpx.post(f"{router.url}/v1/chat/completions", json=CHAT).status_code == 200
            process_id = httpx.get(f"{router.metrics_url}/stats").json()["processId"]

    assert len(patches) >= 2  # one at start, one at shutdown
    last = patches[-1]
    assert last["path"] == "/apis/kascade.dev/v1alpha1/namespaces/team-a/modelcascades/demo/status"
    assert last["content_type"] == "application/merge-patch+json"
    assert last["authorization"] == "Bearer sa-token"
    slot = last["body"]["status"]["replicaCounters"][process_id]
    assert slot["pod"] == "demo-router-7f9c"
    assert slot["requests"] == 3
    assert slot["answeredBy"] == {"small": 3, "large": 0}


def test_an_unreachable_api_server_never_breaks_the_router(start_upstream, two_tier_config, tmp_path):
    from kascade.runtime.serving import free_port

    small = start_upstream(token_prob=0.9)
    large = start_upstream()
    report = StatusReportConfig(
        namespace="ns",
        name="demo",
        api_server=f"http://127.0.0.1:{free_port()}",
        token_file=str(tmp_path / "missing"),
        ca_file=None,
        interval_seconds=0.05,
    )
    config = two_tier_config(small.url, large.url).model_copy(update={"status_report": report})
    with BackgroundServer(create_router_app(config)) as router:
        assert httpx.post(f"{router.url}/v1/chat/completions", json=CHAT).status_code == 200
        assert httpx.get(f"{router.url}/healthz").status_code == 200


def test_a_router_takes_the_calibrated_threshold_from_the_answer_to_its_status_write(
    start_upstream, two_tier_config, tmp_path
):
    async def patch_status(request: Request) -> JSONResponse:  # the operator calibrated "small" down to 0.8
        return JSONResponse(
            {
                "kind": "ModelCascade",
                "status": {"calibration": {"tiers": [{"name": "small", "threshold": 0.8, "declared": 0.95}]}},
            }
        )

    api_server = Starlette(
        routes=[
            Route(
                "/apis/kascade.dev/v1alpha1/namespaces/{ns}/modelcascades/{name}/status",
                patch_status,
                methods=["PATCH"],
            )
        ]
    )
    small = start_upstream(token_prob=0.9)
    large = start_upstream()
    with BackgroundServer(api_server) as api:
        report = StatusReportConfig(
            namespace="team-a",
            name="demo",
            api_server=api.url,
            token_file=str(tmp_path / "none"),
            ca_file=None,
            interval_seconds=30,
        )
        config = two_tier_config(small.url, large.url, accept={"method": "geometricMean", "threshold": 0.95})
        with BackgroundServer(create_router_app(config.model_copy(update={"status_report": report}))) as router:
            deadline = time.monotonic() + 10  # the report at start, and its answer, come soon after the start
            while (
                tier := httpx.post(f"{router.url}/v1/chat/completions", json=CHAT).headers["x-kascade-tier"]
            ) != "small":
                assert time.monotonic() < deadline, "the calibrated threshold never came into force"
                time.sleep(0.05)
            assert tier == "small"  # 0.9 >= 0.8: in force without a restart
