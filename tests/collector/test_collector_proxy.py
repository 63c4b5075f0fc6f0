"""The proxy end to end: scripted engine and collector on real loopback ports."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any

import httpx
import pytest

from tests.collector.collector_helpers import (
    API_KEY,
    SECRET,
    RunningCollector,
    gateway_request_id,
    sse_frames,
)


def chat(stream: bool, include_usage: bool | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "hello there world"}],
        "max_tokens": 8,
        "stream": stream,
        **extra,
    }
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    return body


def test_stream_with_usage_is_byte_identical_and_metered(engine: Any, make_collector: Any) -> None:
    _, upstream = engine
    col: RunningCollector = make_collector(upstream.url)
    body = chat(True, include_usage=True)
    direct = httpx.post(f"{upstream.url}/v1/chat/completions", json=body).content
    resp = httpx.post(
        f"{col.url}/v1/chat/completions", json=body, headers=gateway_request_id("req-1")
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.content == direct
    assert resp.headers["x-infermeter-request-id"] == "req-1"
    assert float(resp.headers["x-infermeter-overhead-ms"]) >= 0
    (rec,) = col.records.wait(1)
    usage = json.loads(sse_frames(direct)[-2])["usage"]
    assert rec.request_id == "req-1"
    assert rec.status == "ok" and rec.stream and rec.http_status == 200
    assert (rec.prompt_tokens, rec.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert rec.finish_reason == "length"
    assert rec.model == "tiny-llama" and rec.endpoint == "/v1/chat/completions"
    assert rec.ttft_s is not None and rec.first_token_at is not None
    assert rec.first_token_at <= rec.finished_at
    assert len(col.records.gaps[0]) == 7  # 8 content frames, 7 gaps; role frame not a token
    assert (
        col.sample(
            "infermeter_requests_total",
            {"tenant": "anonymous", "model": "tiny-llama", "status": "ok"},
        )
        == 1
    )
    assert (
        col.sample(
            "infermeter_completion_tokens_total", {"tenant": "anonymous", "model": "tiny-llama"}
        )
        == 8
    )


def test_stream_without_usage_asks_engine_and_strips_the_extra_chunk(
    engine: Any, make_collector: Any
) -> None:
    eng, upstream = engine
    col = make_collector(upstream.url)
    body = chat(True)
    direct = httpx.post(f"{upstream.url}/v1/chat/completions", json=body).content
    resp = httpx.post(f"{col.url}/v1/chat/completions", json=body)
    assert resp.content == direct  # no usage frame: exactly what vLLM sends such a client
    assert b'"usage"' not in resp.content
    sent = json.loads(eng.requests[-1][2])
    assert sent["stream_options"] == {"include_usage": True}
    (rec,) = col.records.wait(1)
    assert rec.prompt_tokens == 7 and rec.completion_tokens == 8
    assert re.fullmatch(r"[0-9a-f]{32}", rec.request_id)
    assert resp.headers["x-infermeter-request-id"] == rec.request_id


def test_force_usage_off_leaves_the_request_alone(engine: Any, make_collector: Any) -> None:
    eng, upstream = engine
    col = make_collector(upstream.url, force_usage=False)
    resp = httpx.post(
        f"{col.url}/v1/completions",
        json={"model": "tiny-llama", "prompt": "a b c", "max_tokens": 5, "stream": True},
    )
    assert "stream_options" not in json.loads(eng.requests[-1][2])
    (rec,) = col.records.wait(1)
    assert rec.completion_tokens == 5  # counted from content frames
    assert rec.prompt_tokens == 0  # unknown without usage
    assert resp.content.endswith(b"data: [DONE]\n\n")


def test_non_streaming_completion_and_headers_pass_through(
    engine: Any, make_collector: Any
) -> None:
    _, upstream = engine
    col = make_collector(upstream.url)
    body = {"model": "tiny-llama", "prompt": "one two three four", "max_tokens": 6}
    direct = httpx.post(f"{upstream.url}/v1/completions", json=body)
    resp = httpx.post(f"{col.url}/v1/completions", json=body)
    assert resp.status_code == 200 and resp.content == direct.content
    assert resp.headers["content-length"] == str(len(direct.content))
    (rec,) = col.records.wait(1)
    assert (rec.prompt_tokens, rec.completion_tokens, rec.stream) == (4, 6, False)
    assert rec.ttft_s is None and rec.e2e_s is not None and rec.finish_reason == "length"


def test_non_inference_routes_pass_through_untouched(engine: Any, make_collector: Any) -> None:
    _, upstream = engine
    col = make_collector(upstream.url)
    resp = httpx.get(f"{col.url}/v1/models?x=1")
    assert resp.status_code == 200 and resp.json()["q"] == "x=1"
    assert resp.headers["x-engine"] == "yes"
    assert httpx.get(f"{col.url}/health").status_code == 200
    assert httpx.get(f"{col.url}/nope").status_code == 404
    assert col.records.records == []


def test_malformed_requests_keep_engine_status_and_are_recorded(
    engine: Any, make_collector: Any
) -> None:
    _, upstream = engine
    col = make_collector(upstream.url)
    bad_json = httpx.post(
        f"{col.url}/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert bad_json.status_code == 400
    too_long = httpx.post(
        f"{col.url}/v1/completions",
        json={"model": "tiny-llama", "prompt": "x", "max_tokens": 5000, "stream": True},
    )
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "max_tokens"
    no_model = httpx.post(f"{col.url}/v1/completions", json={"model": "nope", "prompt": "x"})
    assert no_model.status_code == 404
    recs = col.records.wait(3)
    assert [(r.status, r.http_status) for r in recs] == [
        ("error", 400),
        ("error", 400),
        ("error", 404),
    ]
    assert recs[0].model == "unknown" and recs[2].model == "nope"
    assert all(r.completion_tokens == 0 for r in recs)


def test_collector_refuses_oversized_tags_and_request_ids(engine: Any, make_collector: Any) -> None:
    _, upstream = engine
    col = make_collector(upstream.url, max_tags_bytes=32)
    resp = httpx.post(
        f"{col.url}/v1/completions",
        json={"model": "tiny-llama", "prompt": "x"},
        headers={"x-infermeter-tags": "feature=" + "a" * 40},
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "x-infermeter-tags"
    resp = httpx.post(
        f"{col.url}/v1/completions",
        json={"model": "tiny-llama", "prompt": "x"},
        headers={"x-infermeter-request-id": "r" * 200},
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "x-infermeter-request-id"
    ok = httpx.post(
        f"{col.url}/v1/completions",
        json={"model": "tiny-llama", "prompt": "x"},
        headers={"x-infermeter-tags": "feature=search"},
    )
    assert ok.status_code == 200
    (rec,) = col.records.wait(1)
    assert rec.tags == {"feature": "search"}


def test_tenant_attribution(engine: Any, make_collector: Any) -> None:
    eng, upstream = engine
    col = make_collector(upstream.url)
    body = {"model": "tiny-llama", "prompt": "x", "max_tokens": 1}
    url = f"{col.url}/v1/completions"
    httpx.post(
        url,
        json=body,
        headers={
            "x-infermeter-tenant": "acme",
            "x-infermeter-gateway-secret": SECRET,
            "x-infermeter-key-id": "k1",
        },
    )
    assert "x-infermeter-gateway-secret" not in eng.requests[-1][1]  # never leaks upstream
    httpx.post(url, json=body, headers={"x-infermeter-tenant": "evil"})  # no secret: ignored
    httpx.post(
        url,
        json=body,
        headers={
            "authorization": f"Bearer {API_KEY}",
            "x-infermeter-tenant": "evil",
            "x-infermeter-gateway-secret": "wrong",
        },
    )
    recs = col.records.wait(3)
    assert [(r.tenant, r.api_key_id) for r in recs] == [
        ("acme", "k1"),
        ("anonymous", ""),
        ("tenant-b", "key-b"),
    ]
    assert col.sample("infermeter_collector_untrusted_tenant_headers_total") == 2


def test_tenant_label_cardinality_guard(engine: Any, make_collector: Any) -> None:
    _, upstream = engine
    col = make_collector(upstream.url, tenant_label_limit=2)
    for tenant in ("t1", "t2", "t3", "t4"):
        httpx.post(
            f"{col.url}/v1/completions",
            json={"model": "tiny-llama", "prompt": "x", "max_tokens": 1},
            headers={"x-infermeter-tenant": tenant, "x-infermeter-gateway-secret": SECRET},
        )
    recs = col.records.wait(4)
    assert [r.tenant for r in recs] == ["t1", "t2", "t3", "t4"]  # records keep the truth
    labels = {"model": "tiny-llama", "status": "ok"}
    assert col.sample("infermeter_requests_total", {**labels, "tenant": "other"}) == 2
    assert col.sample("infermeter_requests_total", {**labels, "tenant": "t1"}) == 1
    assert col.sample("infermeter_collector_tenant_label_overflow_total") == 2


def test_model_label_cardinality_guard(engine: Any, make_collector: Any) -> None:
    """The model is client-chosen: a client inventing names cannot grow /metrics unbounded."""
    _, upstream = engine
    col = make_collector(upstream.url, model_label_limit=2)
    for i in range(5):
        httpx.post(f"{col.url}/v1/completions",
                   json={"model": f"made-up-{i}", "prompt": "x", "max_tokens": 1})  # fmt: skip
    recs = col.records.wait(5)
    assert [r.model for r in recs] == [f"made-up-{i}" for i in range(5)]  # records keep it
    text = httpx.get(f"{col.url}/metrics").text
    assert 'model="made-up-1"' in text and 'model="made-up-2"' not in text
    assert 'model="other"' in text
    assert col.sample("infermeter_collector_model_label_overflow_total") == 3


def test_upstream_down_gives_json_502_and_an_error_record(make_collector: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    col = make_collector(dead)
    resp = httpx.post(f"{col.url}/v1/chat/completions", json=chat(True))
    assert resp.status_code == 502
    assert resp.json()["error"]["type"] == "UpstreamUnavailable"
    passthrough = httpx.get(f"{col.url}/v1/models")
    assert passthrough.status_code == 502
    (rec,) = col.records.wait(1)
    assert (rec.status, rec.http_status, rec.model) == ("error", 502, "tiny-llama")
    assert col.sample("infermeter_collector_upstream_errors_total", {"kind": "connect"}) == 2
    ready = httpx.get(f"{col.url}/readyz")
    assert ready.status_code == 503 and "upstream" in ready.json()["problems"]


def test_upstream_timeout_gives_json_504(engine: Any, make_collector: Any) -> None:
    _, upstream = engine
    col = make_collector(upstream.url, read_timeout_s=0.3)
    resp = httpx.post(
        f"{col.url}/v1/completions",
        json={"model": "tiny-llama", "prompt": "x"},
        headers={"x-test-hang": "1"},
    )
    assert resp.status_code == 504 and resp.json()["error"]["code"] == 504
    (rec,) = col.records.wait(1)
    assert (rec.status, rec.http_status) == ("error", 504)


def test_upstream_dying_mid_stream(engine: Any, make_collector: Any) -> None:
    _, upstream = engine
    col = make_collector(upstream.url)
    resp = httpx.post(
        f"{col.url}/v1/chat/completions", json=chat(True, True), headers={"x-test-die-after": "3"}
    )
    assert resp.status_code == 200
    frames = sse_frames(resp.content)
    assert json.loads(frames[-1])["error"]["type"] == "UpstreamError"
    (rec,) = col.records.wait(1)
    assert (rec.status, rec.http_status, rec.completion_tokens) == ("error", 502, 3)
    assert col.sample("infermeter_collector_upstream_errors_total", {"kind": "midstream"}) == 1


async def test_client_abort_cancels_upstream_and_records_tokens_so_far(
    engine: Any, make_collector: Any
) -> None:
    eng, upstream = engine
    col = make_collector(upstream.url)
    async with (
        httpx.AsyncClient() as client,
        client.stream(
            "POST",
            f"{col.url}/v1/completions",
            json={"model": "tiny-llama", "prompt": "a b", "max_tokens": 200, "stream": True},
            headers={"x-test-delay-ms": "20"},
        ) as resp,
    ):
        seen = 0
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                seen += 1
            if seen == 5:
                break
    (rec,) = await asyncio.to_thread(col.records.wait, 1)
    assert rec.status == "client_abort" and rec.http_status == 499
    assert 5 <= rec.completion_tokens < 200
    for _ in range(200):
        if eng.disconnected:
            break
        await asyncio.sleep(0.01)
    assert eng.disconnected and eng.disconnected[0] < 200  # the engine stopped generating
    assert (
        col.sample(
            "infermeter_requests_total",
            {"tenant": "anonymous", "model": "tiny-llama", "status": "client_abort"},
        )
        == 1
    )


def test_own_endpoints(engine: Any, make_collector: Any) -> None:
    _, upstream = engine
    col = make_collector(upstream.url)
    assert httpx.get(f"{col.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{col.url}/readyz").status_code == 200
    assert httpx.get(f"{col.url}/v1/signals").json() == []
    metrics = httpx.get(f"{col.url}/metrics")
    assert "infermeter_collector_overhead_seconds" in metrics.text
    assert "infermeter_nvml_up 0.0" in metrics.text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_many_concurrent_streams_each_metered_once(
    engine: Any, make_collector: Any, path: str
) -> None:
    _, upstream = engine
    col = make_collector(upstream.url)

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            body = (
                chat(True)
                if path.endswith("chat/completions")
                else {"model": "tiny-llama", "prompt": "p q", "max_tokens": 8, "stream": True}
            )

            async def one(i: int) -> int:
                r = await client.post(
                    f"{col.url}{path}", json=body, headers=gateway_request_id(f"r{i}")
                )
                return r.status_code

            return await asyncio.gather(*(one(i) for i in range(40)))

    assert set(asyncio.run(run())) == {200}
    recs = col.records.wait(40)
    assert sorted(r.request_id for r in recs) == sorted(f"r{i}" for i in range(40))
    assert all(r.completion_tokens == 8 for r in recs)


@pytest.mark.parametrize("include_usage", [True, None])
def test_spaced_json_stream_is_metered_like_the_compact_one(
    engine: Any, make_collector: Any, include_usage: bool | None
) -> None:
    """Valid JSON written with spaces (``"usage": {``) gives the same record as vLLM's
    compact form: prompt tokens, completion tokens and finish reason all read."""
    _, upstream = engine
    col: RunningCollector = make_collector(upstream.url)
    body = chat(True, include_usage=include_usage)
    spaced = {"x-test-spaced-json": "1"}
    direct = httpx.post(f"{upstream.url}/v1/chat/completions", json=body, headers=spaced)
    assert b'"usage": {' in direct.content or include_usage is None
    resp = httpx.post(f"{col.url}/v1/chat/completions", json=body, headers=spaced)
    compact = httpx.post(f"{col.url}/v1/chat/completions", json=body)
    assert resp.status_code == compact.status_code == 200
    spaced_rec, compact_rec = sorted(col.records.wait(2), key=lambda r: r.started_at)
    assert spaced_rec.prompt_tokens == compact_rec.prompt_tokens > 0
    assert spaced_rec.completion_tokens == compact_rec.completion_tokens == 8
    assert spaced_rec.finish_reason == compact_rec.finish_reason == "length"
    assert len(col.records.gaps[0]) == len(col.records.gaps[1]) == 7
    if include_usage is None:  # the collector asked for usage itself: the client never sees it
        assert b'"usage"' not in resp.content


def test_an_oversized_body_is_413_naming_the_limit(engine: Any, make_collector: Any) -> None:
    _, upstream = engine
    col = make_collector(upstream.url, max_body_bytes=4096)
    resp = httpx.post(f"{col.url}/v1/completions", content=b"x" * 5000)
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["param"] == "body" and "4096" in resp.json()["error"]["message"]
    ok = httpx.post(f"{col.url}/v1/completions", json={"model": "tiny-llama", "prompt": "a",
                                                        "max_tokens": 1})  # fmt: skip
    assert ok.status_code == 200
