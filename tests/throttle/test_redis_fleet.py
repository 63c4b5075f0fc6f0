"""Several throttle instances on one real Redis; Redis outages and recovery."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from infermeter.throttle.app import Runtime, create_app
from infermeter.throttle.errors import StorageUnavailable
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.service import AdmitRequest, Throttle
from infermeter.throttle.settings import ThrottleSettings
from infermeter.throttle.storage import with_failover
from infermeter.throttle.storage.failover import FailoverStorage
from infermeter.throttle.storage.redis import RedisStorage
from tests.conftest import ManualClock, ServerThread
from tests.throttle.throttle_helpers import POLICY, RedisServer, redis_uri

FLEET_POLICY = """
default_tier = "t"
[tiers.t]
rate = 6.0          # 0.1 usd/s
per_s = 60
burst = 2.0
concurrency = 0
[models."m"]
prompt = 1.0e-4
completion = 1.0e-4
"""


async def test_instances_sharing_redis_overshoot_within_one_reservation() -> None:
    """4 instances x 8 concurrent callers hammer one tenant for 1.5 s of real time."""
    uri = redis_uri()
    policy = load_policy_text(FLEET_POLICY)
    stores = [RedisStorage(uri) for _ in range(4)]
    await stores[0].clear()
    instances = [Throttle(policy, s, time.time) for s in stores]
    admitted: list[float] = []
    cost = 0.1  # 500 prompt + 500 max tokens at 1e-4

    async def caller(throttle: Throttle, stop: float) -> None:
        while time.time() < stop:
            r = await throttle.admit(
                AdmitRequest(tenant="shared", model="m", max_tokens=500, prompt_tokens=500)
            )
            if r.allowed:
                admitted.append(r.estimate)
                await throttle.settle(r.reservation_id, 500, 0, 500)  # actual == estimate

    start = time.time()
    stop = start + 1.5
    try:
        await asyncio.gather(*(caller(t, stop) for t in instances for _ in range(8)))
        elapsed = time.time() - start
    finally:
        await stores[0].clear()
        for s in stores:
            await s.close()
    allowed_cost = 2.0 + 0.1 * elapsed  # burst + rate x time
    assert sum(admitted) == pytest.approx(len(admitted) * cost)
    assert sum(admitted) <= allowed_cost + cost + 1e-9, (sum(admitted), allowed_cost)
    assert sum(admitted) >= allowed_cost - 2 * cost  # and the limit is actually reachable


async def test_settle_corrections_are_shared_across_instances() -> None:
    uri = redis_uri()
    policy = load_policy_text(FLEET_POLICY)
    a_store, b_store = RedisStorage(uri), RedisStorage(uri)
    clock = ManualClock()
    a, b = Throttle(policy, a_store, clock), Throttle(policy, b_store, clock)
    try:
        reservations = []
        for _ in range(20):
            r = await a.admit(AdmitRequest("x", "m", max_tokens=500, prompt_tokens=500))
            if r.allowed:
                reservations.append(r.reservation_id)
        assert len(reservations) == 20  # 20 x 0.1 = the 2.0 burst
        assert not (await b.admit(AdmitRequest("x", "m", 500, 500))).allowed
        for rid in reservations:  # settled on the other instance: each used a tenth
            await b.settle(rid, 50, 0, 50)
        room = await a.admit(AdmitRequest(tenant="x", model="m", max_tokens=500, prompt_tokens=500))
        assert room.allowed
    finally:
        await a_store.clear()
        await a_store.close()
        await b_store.close()


async def test_redis_down_keeps_deciding_locally_and_recovers(redis_server: RedisServer) -> None:
    clock = ManualClock()
    storage = with_failover(RedisStorage(redis_server.uri), clock)
    assert isinstance(storage, FailoverStorage)
    throttle = Throttle(load_policy_text(POLICY), storage, clock)
    first = await throttle.admit(AdmitRequest("t1", "m", 1000, 100))
    assert first.allowed and not storage.degraded
    redis_server.stop()
    # decisions now come from local state, where the tier limits still apply (burst 0.05
    # usd, 0.021 per request: two fit in a fresh local bucket)
    second = await throttle.admit(AdmitRequest("t1", "m", 1000, 100))
    assert second.allowed and storage.degraded and storage.failures == 1
    assert [
        (await throttle.admit(AdmitRequest("t1", "m", 1000, 100))).allowed for _ in range(3)
    ] == [True, False, False]
    local = await throttle.settle(second.reservation_id, 100, 0, 10)  # settled locally
    assert local.delta < 0
    assert not await storage.probe()
    redis_server.start()
    assert await storage.probe()
    assert not storage.degraded and storage.recoveries == 1
    back = await throttle.admit(AdmitRequest("t1", "m", 1000, 100))
    assert back.allowed  # decided by Redis again
    await storage.close()


async def test_fail_closed_refuses_while_redis_is_down(redis_server: RedisServer) -> None:
    clock = ManualClock()
    storage = with_failover(RedisStorage(redis_server.uri), clock, fail_closed=True)
    throttle = Throttle(load_policy_text(POLICY), storage, clock)
    redis_server.stop()
    refused = await throttle.admit(AdmitRequest("t1", "m", 10, 10))
    assert not refused.allowed and refused.reason == "unavailable"
    await storage.close()


def test_readyz_and_metrics_expose_the_outage(redis_server: RedisServer) -> None:
    settings = ThrottleSettings(storage=redis_server.uri, probe_interval_s=0.1)
    runtime = Runtime(settings, policy=load_policy_text(POLICY))
    with ServerThread(create_app(runtime)) as srv:
        body = {"tenant": "t1", "model": "m", "prompt_tokens": 1, "max_tokens": 1}
        assert httpx.post(f"{srv.url}/v1/admit", json=body).status_code == 200
        assert httpx.get(f"{srv.url}/readyz").status_code == 200
        redis_server.stop()
        assert httpx.post(f"{srv.url}/v1/admit", json=body).status_code == 200  # fail-open
        ready = httpx.get(f"{srv.url}/readyz")
        assert ready.status_code == 503 and "storage" in ready.json()["problems"]
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'infermeter_throttle_storage_up{backend="redis"} 0.0' in metrics
        assert "infermeter_throttle_local_decisions_total 1.0" in metrics
        redis_server.start()
        deadline = time.monotonic() + 10
        while httpx.get(f"{srv.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.05)
        assert 'storage_up{backend="redis"} 1.0' in httpx.get(f"{srv.url}/metrics").text


async def test_unreachable_redis_raises_storage_unavailable() -> None:
    from tests.conftest import free_port

    store = RedisStorage(f"redis://127.0.0.1:{free_port()}/0?timeout_ms=100")
    with pytest.raises(StorageUnavailable):
        await store.ping()
    await store.close()
