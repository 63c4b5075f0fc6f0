"""OpenTelemetry export named by the GenAI semantic conventions, configured from the standard
``OTEL_EXPORTER_OTLP_*`` variables.

Enabled when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the per-signal ``..._METRICS_ENDPOINT`` /
``..._TRACES_ENDPOINT``) is set; ``OTEL_EXPORTER_OTLP_PROTOCOL`` picks ``http/protobuf``
(default) or ``grpc``; headers, timeouts and ``OTEL_METRIC_EXPORT_INTERVAL`` are read by the
SDK's exporters themselves. Metrics: ``gen_ai.server.time_to_first_token``,
``gen_ai.server.time_per_output_token``, ``gen_ai.server.request.duration`` and
``gen_ai.client.token.usage`` (``gen_ai.token.type`` = input | output), with
``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.provider.name`` and, on
failures, ``error.type``. One span per request (``{operation} {model}``) carrying the same
attributes plus ``gen_ai.usage.*`` and the infermeter request id and tenant.

Export runs on the SDK's own threads from records the pipeline already finished: a slow or
failing OTLP endpoint is logged by the SDK and never reaches proxied traffic.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.metrics import Histogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from infermeter.kernel.records import UsageRecord

log = logging.getLogger(__name__)
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}
TTFT_BOUNDS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
               5.0, 7.5, 10.0)  # fmt: skip
TPOT_BOUNDS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
DURATION_BOUNDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                   40.96, 81.92)  # fmt: skip
TOKEN_BOUNDS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                16777216, 67108864)  # fmt: skip


def otlp_configured(environ: Mapping[str, str]) -> bool:
    """Whether the standard OTLP variables ask for export."""
    return any(
        environ.get(name)
        for name in (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        )
    )


def _exporters(environ: Mapping[str, str]) -> tuple[MetricExporter, SpanExporter]:
    protocol = environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcMetricExporter(), GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPMetricExporter(), OTLPSpanExporter()


class GenAiTelemetry:
    """A record exporter (see ``infermeter.collector.pipeline``) writing GenAI metrics and spans."""

    def __init__(
        self,
        metric_exporter: MetricExporter,
        span_exporter: SpanExporter,
        *,
        provider_name: str = "vllm",
        export_interval_ms: float | None = None,
        resource: Resource | None = None,
    ) -> None:
        res = resource or Resource.create({"service.name": "infermeter-collector"})
        interval = export_interval_ms
        if interval is None:
            interval = float(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "10000"))
        self.reader = PeriodicExportingMetricReader(
            metric_exporter, export_interval_millis=interval
        )
        self.meters = MeterProvider(resource=res, metric_readers=[self.reader])
        self.tracers = TracerProvider(resource=res)
        self.tracers.add_span_processor(BatchSpanProcessor(span_exporter))
        self.tracer = self.tracers.get_tracer("infermeter.collector")
        meter = self.meters.get_meter("infermeter.collector")
        self.provider_name = provider_name
        self.ttft: Histogram = meter.create_histogram(
            "gen_ai.server.time_to_first_token", unit="s",
            description="Time to generate first token for successful responses",
            explicit_bucket_boundaries_advisory=TTFT_BOUNDS,
        )  # fmt: skip
        self.tpot: Histogram = meter.create_histogram(
            "gen_ai.server.time_per_output_token", unit="s",
            description="Time per output token generated after the first token",
            explicit_bucket_boundaries_advisory=TPOT_BOUNDS,
        )  # fmt: skip
        self.duration: Histogram = meter.create_histogram(
            "gen_ai.server.request.duration", unit="s",
            description="Generative AI server request duration",
            explicit_bucket_boundaries_advisory=DURATION_BOUNDS,
        )  # fmt: skip
        self.tokens: Histogram = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BOUNDS,
        )  # fmt: skip

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> GenAiTelemetry | None:
        """Build from ``OTEL_EXPORTER_OTLP_*``; None when export is not configured."""
        env = os.environ if environ is None else environ
        if not otlp_configured(env):
            return None
        metric_exporter, span_exporter = _exporters(env)
        name = env.get("OTEL_SERVICE_NAME", "infermeter-collector")
        return cls(metric_exporter, span_exporter, resource=Resource.create({"service.name": name}))

    def export(self, rec: UsageRecord, gaps: Sequence[float]) -> None:
        operation = OPERATIONS.get(rec.endpoint, "chat")
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": rec.model,
            "gen_ai.provider.name": self.provider_name,
        }
        if rec.status != "ok":
            attrs["error.type"] = rec.status if rec.status != "error" else str(rec.http_status)
        if rec.ttft_s is not None and rec.status == "ok":
            self.ttft.record(rec.ttft_s, attrs)
        if rec.itl_mean_s is not None and rec.status == "ok":
            self.tpot.record(rec.itl_mean_s, attrs)
        if rec.e2e_s is not None:
            self.duration.record(rec.e2e_s, attrs)
        if rec.prompt_tokens:
            self.tokens.record(rec.prompt_tokens, {**attrs, "gen_ai.token.type": "input"})
        if rec.completion_tokens:
            self.tokens.record(rec.completion_tokens, {**attrs, "gen_ai.token.type": "output"})
        span_attrs = {
            **attrs,
            "gen_ai.usage.input_tokens": rec.prompt_tokens,
            "gen_ai.usage.output_tokens": rec.completion_tokens,
            "gen_ai.request.stream": rec.stream,
            "http.response.status_code": rec.http_status,
            "infermeter.request_id": rec.request_id,
            "infermeter.tenant": rec.tenant,
            "infermeter.status": rec.status,
        }
        if rec.finish_reason:
            span_attrs["gen_ai.response.finish_reasons"] = [rec.finish_reason]
        if rec.ttft_s is not None:
            span_attrs["gen_ai.server.time_to_first_token"] = rec.ttft_s
        span = self.tracer.start_span(
            f"{operation} {rec.model}",
            kind=SpanKind.SERVER,
            attributes=span_attrs,
            start_time=int(rec.started_at.timestamp() * 1e9),
        )
        if rec.status == "error":
            span.set_status(Status(StatusCode.ERROR, f"HTTP {rec.http_status}"))
        span.end(end_time=int(rec.finished_at.timestamp() * 1e9))

    def flush(self, timeout_ms: int = 5000) -> None:
        """Push everything recorded so far (tests, shutdown)."""
        self.tracers.force_flush(timeout_ms)
        self.meters.force_flush(timeout_ms)

    def shutdown(self) -> None:
        try:
            self.tracers.shutdown()
            self.meters.shutdown()
        except Exception:  # shutting down must not fail the service
            log.exception("OpenTelemetry shutdown failed")
