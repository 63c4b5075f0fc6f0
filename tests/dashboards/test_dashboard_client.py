"""The API client against the real services: errors carry the service's message; a dead or
hung service becomes ServiceUnavailable within the timeout."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from infermeter.dashboards.client import MeteringClient, ThrottleClient, TimeRange
from infermeter.dashboards.errors import ServiceError, ServiceUnavailable
from tests.conftest import free_port
from tests.dashboards.dashboard_helpers import READ, THROTTLE_API, Stack


def day() -> TimeRange:
    until = datetime.now(UTC)
    return TimeRange(until - timedelta(days=1), until)


def test_reads_reports_with_the_read_token(stack: Stack) -> None:
    client = MeteringClient(stack.metering_url, READ)
    cost = client.cost("model", day(), "total")
    assert cost["by"] == "model" and cost["rows"][0]["model"] == "llama-3.1-8b"
    record = stack.load.records[3]
    found = client.request(record.request_id)
    assert found is not None and found["record"]["tenant"] == record.tenant
    assert client.request("nope/../x") is None
    assert "llama-3.1-8b" in client.rates().models


def test_errors_name_the_service_status_and_field(stack: Stack) -> None:
    with pytest.raises(ServiceError) as denied:
        MeteringClient(stack.metering_url, "wrong").budgets()
    assert denied.value.status == 401 and "metering answered 401" in str(denied.value)
    with pytest.raises(ServiceError) as bad:
        MeteringClient(stack.metering_url, READ).cost("colour", day())
    assert bad.value.status == 400 and bad.value.param == "by"
    with pytest.raises(ServiceError) as unauthorized:
        ThrottleClient(stack.throttle_url, "wrong").tenant_usage("acme")
    assert unauthorized.value.status == 401


def test_throttle_reads(stack: Stack) -> None:
    client = ThrottleClient(stack.throttle_url, THROTTLE_API)
    assert client.tenant_usage("acme")["tier"] == "pro"
    assert [p["pool"] for p in client.autoscale()] == ["chat"]
    decisions = client.metrics("infermeter_throttle_decisions")
    assert {s.labels["decision"] for s in decisions if s.name.endswith("_total")} == {
        "allow",
        "deny",
    }


def test_nothing_listening_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServiceUnavailable) as down:
        MeteringClient(url).budgets()
    assert down.value.service == "metering" and url in str(down.value)


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A real TCP listener that accepts and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


def test_hung_service_times_out(hung_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="timed out"):
        ThrottleClient(f"http://127.0.0.1:{hung_port}", timeout_s=0.3).autoscale()
    assert time.monotonic() - started < 2.0
