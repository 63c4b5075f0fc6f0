"""Collector test fixtures: a scripted vLLM-shaped engine and collectors on real ports."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from scripted_engine import ScriptedEngine
from tests_helpers_collector import API_KEY, SECRET, RunningCollector

from collector.app import CollectorApp
from collector.settings import CollectorSettings
from metering.contracts import UsageRecord
from serving.tenancy import KeyEntry, TenantResolver, hash_key


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


VLLM_START_TIMEOUT_S = 240.0


@pytest.fixture(scope="session")
def real_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Real vLLM (CPU build, tiny model) through ``infermeter engine vllm --cpu-dev``.

    Fails (never skips) with instructions when the CPU install is missing.
    """
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import httpx
    from tests_helpers_collector import free_port

    from serving import vllm_cpu
    from serving.errors import EngineNotInstalled
    from serving.vllm_process import ensure_installed

    try:
        install = vllm_cpu.require_install()
        ensure_installed(str(install.python))
    except EngineNotInstalled as exc:
        pytest.fail(f"real vLLM is needed: {exc} (bash serving/vllm_cpu/setup.sh)", pytrace=False)
    repo = Path(__file__).resolve().parents[2]
    work = tmp_path_factory.mktemp("collector-vllm")
    (work / "empty.toml").write_text("")
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "serving",
        "engine",
        "vllm",
        "--cpu-dev",
        "--config",
        str(work / "empty.toml"),
        "--port",
        str(port),
        "--max-model-len",
        "512",
        "--stop-grace",
        "20",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER__")}
    log_path = work / "vllm.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=repo, env=env, start_new_session=True
        )
        try:
            deadline = time.monotonic() + VLLM_START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"vLLM exited: {log_path.read_text()[-3000:]}", pytrace=False)
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"vLLM not healthy: {log_path.read_text()[-3000:]}", pytrace=False)
                time.sleep(0.2)
            yield url
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
