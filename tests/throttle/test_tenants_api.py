"""GET /v1/tenants and GET /v1/tenants/{tenant}/decisions on both storage backends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from infermeter.throttle.api import parse_since
from infermeter.throttle.app import Runtime, create_app
from infermeter.throttle.decision_log import DecisionLog, counts_by_reason
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.settings import ThrottleSettings
from infermeter.throttle.storage.base import Storage
from infermeter.throttle.storage.memory import MemoryStorage
from infermeter.throttle.storage.redis import RedisStorage
from tests.conftest import ManualClock, ServerThread
from tests.throttle.throttle_helpers import MACHINE_REDIS, POLICY


async def _clear(uri: str) -> None:
    store = RedisStorage(uri)
    await store.clear()
    await store.close()


@pytest.fixture(params=["memory", "redis"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[ServerThread, ManualClock]]:
    clock = ManualClock()
    uri = f"{MACHINE_REDIS}?prefix=test:{uuid.uuid4().hex[:12]}&timeout_ms=3000"
    storage: Storage = MemoryStorage() if request.param == "memory" else RedisStorage(uri)
    runtime = Runtime(
        ThrottleSettings(decision_log_entries=50),
        now=clock,
        storage=storage,
        policy=load_policy_text(POLICY),
    )
    try:
        with ServerThread(create_app(runtime, background=False)) as srv:
            yield srv, clock
    finally:
        if request.param == "redis":
            asyncio.run(_clear(uri))


def _admit(url: str, tenant: str) -> httpx.Response:
    body = {"tenant": tenant, "model": "m", "prompt_tokens": 100, "max_tokens": 1000}
    return httpx.post(f"{url}/v1/admit", json=body)


def test_tenants_and_decisions_over_time(server: tuple[ServerThread, ManualClock]) -> None:
    srv, clock = server
    start = clock()
    statuses = [_admit(srv.url, "t1").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    clock.advance(10)
    later = clock()
    assert _admit(srv.url, "t1").status_code == 200
    assert _admit(srv.url, "acme").status_code == 200

    listing = httpx.get(f"{srv.url}/v1/tenants").json()
    by_name = {t["tenant"]: t for t in listing["tenants"]}
    # "tiny" is only in the policy; "t1" only in recent decisions; acme in both.
    assert [t["tenant"] for t in listing["tenants"]] == sorted(by_name) == ["acme", "t1", "tiny"]
    assert listing["total"] == 3 and listing["truncated"] is False and listing["unit"] == "usd"
    t1 = by_name["t1"]
    assert t1["tier"] == "free" and t1["weight"] == 1.0 and t1["in_policy"] is False
    assert t1["recent"] == {"decisions": 4, "allowed": 3, "denied": 1, "last_ts": later}
    assert t1["usage"]["in_flight"] == 3 and t1["usage"]["concurrency_limit"] == 3
    assert t1["usage"]["daily_spent"] == pytest.approx(3 * 0.021)
    assert by_name["acme"]["tier"] == "pro" and by_name["acme"]["weight"] == 2.0
    assert by_name["tiny"]["recent"] is None and by_name["tiny"]["in_policy"] is True
    assert by_name["tiny"]["usage"]["in_flight"] == 0
    first = httpx.get(f"{srv.url}/v1/tenants", params={"limit": 1}).json()
    assert [t["tenant"] for t in first["tenants"]] == ["acme"] and first["truncated"] is True

    everything = httpx.get(f"{srv.url}/v1/tenants/t1/decisions").json()
    assert [(d["decision"], d["reason"]) for d in everything["decisions"]] == [
        ("allow", ""), ("allow", ""), ("deny", "rate"), ("allow", ""),
    ]  # fmt: skip
    assert [d["ts"] for d in everything["decisions"]] == [start, start, start, later]
    assert everything["decisions"][0]["cost"] == pytest.approx(0.021)
    assert everything["counts"] == {"allow": 3, "rate": 1}
    rfc3339 = datetime.fromtimestamp(start + 5, UTC).isoformat().replace("+00:00", "Z")
    for since in (rfc3339, str(start + 5)):
        recent = httpx.get(f"{srv.url}/v1/tenants/t1/decisions", params={"since": since})
        assert recent.status_code == 200, recent.text
        assert recent.json()["counts"] == {"allow": 1}
        assert recent.json()["since"] == pytest.approx(start + 5)
    assert httpx.get(f"{srv.url}/v1/tenants/nobody/decisions").json()["decisions"] == []


def test_bad_query_parameters_are_400_naming_the_field(
    server: tuple[ServerThread, ManualClock],
) -> None:
    srv, _ = server
    for since in ("yesterday", "2026-11-24T10:00:00", "-5", "nan"):
        resp = httpx.get(f"{srv.url}/v1/tenants/t1/decisions", params={"since": since})
        assert resp.status_code == 400, since
        assert resp.json()["error"]["param"] == "since"
    for limit in ("0", "x", "100001"):
        resp = httpx.get(f"{srv.url}/v1/tenants", params={"limit": limit})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "limit"
    spec = httpx.get(f"{srv.url}/openapi.json").json()
    assert "/v1/tenants" in spec["paths"] and "/v1/tenants/{tenant}/decisions" in spec["paths"]


def test_decision_log_is_bounded_per_tenant_and_in_tenants() -> None:
    log = DecisionLog(max_tenants=3, max_entries=4)
    for i in range(10):
        log.record("a", float(i), i % 2 == 0, "" if i % 2 == 0 else "rate", 1.0)
    assert [e[0] for e in log.since("a", 0)] == [6.0, 7.0, 8.0, 9.0]
    assert counts_by_reason(log.since("a", 7.5)) == {"allow": 1, "rate": 1}
    log.record("b", 1.0, True, "", 1.0)
    log.record("c", 1.0, True, "", 1.0)
    log.record("a", 11.0, True, "", 1.0)  # a is now the most recently decided
    log.record("d", 1.0, False, "budget", 1.0)  # evicts b, the least recently decided
    assert log.tenants() == ["c", "a", "d"]
    assert log.since("b", 0) == []
    activity = log.activity("a")
    assert activity is not None and activity.decisions == 4 and activity.last_ts == 11.0
    with pytest.raises(ValueError):
        DecisionLog(max_tenants=0)


def test_parse_since() -> None:
    assert parse_since("1795529753.5") == 1795529753.5
    assert (
        parse_since("2026-11-24T15:00:00+01:00")
        == datetime(2026, 11, 24, 14, 0, tzinfo=UTC).timestamp()
    )
    assert parse_since("2026-11-24T15:00:00Z") == datetime(2026, 11, 24, 15, tzinfo=UTC).timestamp()
    assert parse_since("2026-11-24") is None and parse_since("inf") is None
