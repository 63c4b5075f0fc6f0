"""OTLP/HTTP export against a real loopback receiver that decodes the protobuf it gets."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from infermeter.collector.app import CollectorApp
from infermeter.collector.settings import CollectorSettings
from infermeter.kernel.tenancy import TenantResolver
from tests.collector.collector_helpers import SECRET, gateway_request_id
from tests.conftest import free_port


def attrs(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = [getattr(v, v.WhichOneof("value")) for v in value.array_value.values]
        else:
            out[kv.key] = getattr(value, kind)
    return out


class OtlpReceiver:
    """Minimal OTLP/HTTP (protobuf) receiver: /v1/metrics and /v1/traces."""

    def __init__(self) -> None:
        self.metrics: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        self.spans: list[Any] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        with self.lock:
            if scope["path"] == "/v1/metrics":
                req = ExportMetricsServiceRequest.FromString(body)
                for rm in req.resource_metrics:
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            for point in metric.histogram.data_points:
                                self.metrics.setdefault(metric.name, []).append(
                                    (attrs(point.attributes), point)
                                )
            elif scope["path"] == "/v1/traces":
                req = ExportTraceServiceRequest.FromString(body)
                for rs in req.resource_spans:
                    for ss in rs.scope_spans:
                        self.spans.extend(ss.spans)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-protobuf")],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def test_genai_metrics_and_spans_arrive(
    engine: Any, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, upstream = engine
    receiver = OtlpReceiver()
    otlp = serve(receiver)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    app = CollectorApp(
        CollectorSettings(upstream=upstream.url, nvml=False, scrape_interval_s=3600),
        TenantResolver(SECRET),
        nvml=None,
    )
    assert app.telemetry is not None
    col = serve(app)
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "a b c"}],
        "max_tokens": 6,
        "stream": True,
    }
    r = httpx.post(
        f"{col.url}/v1/chat/completions", json=body, headers=gateway_request_id("otel-1")
    )
    assert r.status_code == 200
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with receiver.lock:
            if receiver.spans and "gen_ai.client.token.usage" in receiver.metrics:
                break
        time.sleep(0.05)
    (span,) = [
        s for s in receiver.spans if attrs(s.attributes).get("infermeter.request_id") == "otel-1"
    ]
    a = attrs(span.attributes)
    assert span.name == "chat tiny-llama"
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "tiny-llama"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (7, 6)
    assert a["gen_ai.response.finish_reasons"] == ["length"]
    assert span.end_time_unix_nano > span.start_time_unix_nano
    for name in (
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.time_per_output_token",
        "gen_ai.server.request.duration",
    ):
        point_attrs, point = receiver.metrics[name][-1]
        assert point_attrs["gen_ai.request.model"] == "tiny-llama" and point.count >= 1, name
    usage = {
        p_attrs["gen_ai.token.type"]: p.sum
        for p_attrs, p in receiver.metrics["gen_ai.client.token.usage"]
    }
    assert usage == {"input": 7, "output": 6}


def test_export_failure_never_touches_traffic(
    engine: Any, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, upstream = engine
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}"
    )  # nobody there
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "50")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    app = CollectorApp(
        CollectorSettings(upstream=upstream.url, nvml=False, scrape_interval_s=3600),
        TenantResolver(SECRET),
        nvml=None,
    )
    col = serve(app)
    body = {"model": "tiny-llama", "prompt": "x", "max_tokens": 2, "stream": True}
    for _ in range(20):
        r = httpx.post(f"{col.url}/v1/completions", json=body, timeout=5)
        assert r.status_code == 200 and r.content.endswith(b"[DONE]\n\n")
    requests = app.registry.get_sample_value(
        "infermeter_requests_total", {"tenant": "anonymous", "model": "tiny-llama", "status": "ok"}
    )
    deadline = time.monotonic() + 5
    while requests != 20 and time.monotonic() < deadline:
        time.sleep(0.02)
        requests = app.registry.get_sample_value(
            "infermeter_requests_total",
            {"tenant": "anonymous", "model": "tiny-llama", "status": "ok"},
        )
    assert requests == 20
