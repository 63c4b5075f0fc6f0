"""Small helpers shared by the collector tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

SECRET = "gateway-secret"
API_KEY = "sk-tenant-b"


def gateway_request_id(request_id: str) -> dict[str, str]:
    """Headers of a request id the collector honours: sent with the gateway's secret."""
    return {"x-infermeter-request-id": request_id, "x-infermeter-gateway-secret": SECRET}


@dataclass
class RunningCollector:
    """A collector app served on a loopback port, with its records and registry."""

    server: Any
    app: Any
    records: Any
    registry: CollectorRegistry

    @property
    def url(self) -> str:
        return str(self.server.url)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


def sse_frames(raw: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame.startswith("data: "):
            out.append(frame[len("data: ") :])
    return out
