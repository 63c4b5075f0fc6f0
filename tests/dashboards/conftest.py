"""Dashboards fixtures: a real metering service (in-memory DuckDB, seeded through its
ingest API and allocated) and a real throttle, both on loopback ports, once per session."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from infermeter.metering.api import create_app as metering_app
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import MeteringSettings
from infermeter.throttle.app import Runtime
from infermeter.throttle.app import create_app as throttle_app
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.settings import ThrottleSettings
from tests.conftest import ServerThread
from tests.dashboards.dashboard_helpers import (
    INGEST,
    METERING_TOML,
    POLICY,
    READ,
    THROTTLE_API,
    SeedClock,
    Stack,
    push_signals,
    seed_metering,
    seed_throttle,
    workload,
)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    settings = MeteringSettings.model_validate(
        {
            "storage": "duckdb:///:memory:",
            "ingest_token": INGEST,
            "read_token": READ,
            "allocate_every_s": 0,
            **METERING_TOML,
        }
    )
    service = MeteringService(settings, now=time.time)
    clock = SeedClock()
    runtime = Runtime(
        ThrottleSettings(api_token=THROTTLE_API), now=clock, policy=load_policy_text(POLICY)
    )
    metering = ServerThread(metering_app(service, start_loop=False)).start()
    throttle = ServerThread(throttle_app(runtime, background=False)).start()
    try:
        load = workload(time.time())
        allocation = seed_metering(metering.url, load)
        seed_throttle(throttle.url, clock)
        yield Stack(metering.url, throttle.url, load, allocation)
    finally:
        throttle.stop()
        metering.stop()
        service.stop()


@pytest.fixture
def dashboard_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """The process environment of a dashboard pointed at the seeded stack."""
    monkeypatch.delenv("INFERMETER_CONFIG", raising=False)
    for key, value in stack.env().items():
        monkeypatch.setenv(key, value)
    push_signals(stack.throttle_url)
    return stack
