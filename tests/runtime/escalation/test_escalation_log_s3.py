"""The escalation log on an S3-compatible store: a real S3 server (moto's, on loopback), the real s3fs client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from kascade.api.escalation_record import ModelIdentity
from kascade.runtime.config import EscalationLogConfig
from kascade.runtime.engines.base import Endpoint
from kascade.runtime.escalation.log import EscalationLog
from kascade.runtime.escalation.records import AnswerSeen, EscalationSeen
from kascade.runtime.escalation.segments import SegmentStore

pytestmark = pytest.mark.slow  # an S3 server on loopback


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # The standard AWS variables, as a router pod gets them from spec.escalationLog.credentialsSecret.
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    import fsspec

    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("escalations")
    try:
        yield endpoint
    finally:
        import httpx

        httpx.post(f"{endpoint}/moto-api/reset")  # moto's state lives in the process, not in the server
        server.stop()


def _seen(index: int) -> EscalationSeen:
    return EscalationSeen(
        cascade="demo",
        endpoint=Endpoint.completion,
        body={"prompt": f"call me at +44 20 7946 0958 ({index})"},
        declined=(),
        answered_by=ModelIdentity(tier="large", served_model="large-model"),
        answer=AnswerSeen(text=f"answer {index}"),
        input_tokens=5,
        output_tokens=2,
    )


def test_segments_go_to_s3_whole_and_read_back(s3_endpoint: str) -> None:
    config = EscalationLogConfig(uri="s3://escalations/cascades/demo", segment_records=2, flush_seconds=30)

    async def run() -> None:
        log = EscalationLog(config, process_id="router-0")
        await log.start()
        for index in range(5):
            log.offer(_seen(index))
        await log.close()
        assert log.written == 5

    asyncio.run(run())
    store = SegmentStore("s3://escalations/cascades/demo")
    assert len(store.segments()) == 3
    records = list(store.records())
    assert [record.answer for record in records] == [f"answer {index}" for index in range(5)]
    assert all("7946" not in record.request and record.redacted for record in records)
