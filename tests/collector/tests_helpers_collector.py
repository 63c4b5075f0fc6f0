"""Small helpers shared by the collector tests."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

SECRET = "gateway-secret"
API_KEY = "sk-tenant-b"


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


def _root_conftest() -> Any:
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("infermeter_root_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def promtool_check(exposition: str) -> tuple[int, list[str]]:
    """tests/conftest.py's promtool_check (the shared helper)."""
    return _root_conftest().promtool_check(exposition)  # type: ignore[no-any-return]


def sse_frames(raw: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame.startswith("data: "):
            out.append(frame[len("data: ") :])
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
