"""Collector test fixtures: a scripted vLLM-shaped engine and collectors on real ports."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from infermeter.collector.app import CollectorApp
from infermeter.collector.settings import CollectorSettings
from infermeter.kernel.records import UsageRecord
from infermeter.kernel.tenancy import KeyEntry, TenantResolver, hash_key
from tests.collector.collector_helpers import API_KEY, SECRET, RunningCollector
from tests.collector.scripted_engine import ScriptedEngine


class RecordingExporter:
    """In-memory record exporter: what the pipeline finished, for assertions."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self.gaps: list[Sequence[float]] = []
        self._lock = threading.Lock()

    def export(self, rec: UsageRecord, gaps: Sequence[float]) -> None:
        with self._lock:
            self.records.append(rec)
            self.gaps.append(list(gaps))

    def wait(self, n: int, timeout: float = 10.0) -> list[UsageRecord]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.records) >= n:
                    return list(self.records)
            time.sleep(0.01)
        raise AssertionError(f"expected {n} records, got {len(self.records)}")


def resolver() -> TenantResolver:
    return TenantResolver(SECRET, {hash_key(API_KEY): KeyEntry("tenant-b", "key-b", "pro")})


@pytest.fixture
def engine(serve: Callable[..., Any]) -> tuple[ScriptedEngine, Any]:
    app = ScriptedEngine()
    return app, serve(app)


@pytest.fixture
def make_collector(serve: Callable[..., Any]) -> Callable[..., RunningCollector]:

    def _make(upstream: str, **overrides: Any) -> RunningCollector:
        settings = CollectorSettings(
            upstream=upstream,
            scrape_interval_s=overrides.pop("scrape_interval_s", 3600),
            nvml=False,
            **overrides,
        )
        registry = CollectorRegistry()
        exporter = RecordingExporter()
        app = CollectorApp(
            settings,
            resolver(),
            registry=registry,
            nvml=None,
            telemetry=None,
            exporters=[exporter],
        )
        server = serve(app, server_header=False, date_header=False)
        return RunningCollector(server, app, exporter, registry)

    return _make
