"""One contract for every job backend (in process and real Redis Streams)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from infermeter.serving.gateway.errors import TooManyJobs
from infermeter.serving.gateway.jobs.memory import MemoryJobs
from infermeter.serving.gateway.jobs.model import Job, JobBackend
from infermeter.serving.gateway.jobs.redis_streams import RedisJobs, split_uri

REDIS = "redis://127.0.0.1:6379/0"


def job(pool: str = "p", tenant: str = "acme") -> Job:
    return Job(
        id="job_" + uuid.uuid4().hex,
        pool=pool,
        tenant=tenant,
        endpoint="/v1/chat/completions",
        request={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        created_at=1.0,
        deadline_at=100.0,
    )


async def _cleanup(prefix: str) -> None:
    r = aioredis.Redis.from_url(REDIS)
    keys = [k async for k in r.scan_iter(match=prefix + ":*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[JobBackend]:
    if request.param == "memory":
        yield MemoryJobs()
        return
    prefix = "test-gw-" + uuid.uuid4().hex[:8]
    be = RedisJobs(f"{REDIS}?prefix={prefix}", claim_idle_s=0.2, max_attempts=2)
    try:
        yield be
    finally:
        await be.close()
        await _cleanup(prefix)


async def test_submit_claim_events_ack(backend: JobBackend) -> None:
    j = job()
    await backend.submit(j)
    stored = await backend.get(j.id)
    assert stored is not None and stored.status == "queued" and stored.request == j.request
    delivery = await backend.claim("p", "w1", block_s=1.0)
    assert delivery is not None and delivery.job_id == j.id and delivery.attempt == 1
    assert await backend.claim("other-pool", "w1", block_s=0.05) is None
    await backend.append(j.id, "started", {"attempt": 1})
    await backend.append(j.id, "delta", {"text": "Hel"})
    await backend.append(j.id, "delta", {"text": "lo"})
    events = await backend.events(j.id, None, block_s=0.1)
    assert [e.type for e in events] == ["queued", "started", "delta", "delta"]
    assert all(backend.valid_event_id(e.id) for e in events)
    # Resume after the second event: exactly the rest, nothing lost or repeated.
    rest = await backend.events(j.id, events[1].id, block_s=0.1)
    assert [e.data for e in rest] == [{"text": "Hel"}, {"text": "lo"}]
    stored.status = "succeeded"
    await backend.save(stored)
    await backend.ack(delivery)
    again = await backend.get(j.id)
    assert again is not None and again.status == "succeeded"
    assert await backend.claim("p", "w1", block_s=0.05) is None
    assert not backend.valid_event_id("not-an-id")


async def test_events_wait_for_new_ones(backend: JobBackend) -> None:
    j = job()
    await backend.submit(j)
    first = await backend.events(j.id, None, block_s=0.1)
    waiter = asyncio.ensure_future(backend.events(j.id, first[-1].id, block_s=5.0))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await backend.append(j.id, "done", {"ok": True})
    got = await asyncio.wait_for(waiter, timeout=5.0)
    assert [e.type for e in got] == ["done"]


async def test_redis_redelivers_an_abandoned_job_then_dead_letters() -> None:
    prefix = "test-gw-" + uuid.uuid4().hex[:8]
    be = RedisJobs(f"{REDIS}?prefix={prefix}", claim_idle_s=0.2, max_attempts=2)
    try:
        j = job()
        await be.submit(j)
        first = await be.claim("p", "dies", block_s=1.0)
        assert first is not None and first.attempt == 1
        # The worker dies without acknowledging: nobody gets it until it is idle long enough.
        assert await be.claim("p", "survivor", block_s=0.05) is None
        await asyncio.sleep(0.3)
        second = await be.claim("p", "survivor", block_s=1.0)
        assert second is not None and second.job_id == j.id and second.attempt == 2
        # A live worker's heartbeat keeps its job from being taken.
        for _ in range(3):
            await asyncio.sleep(0.1)
            await be.heartbeat(second, "survivor")
        assert await be.claim("p", "thief", block_s=0.05) is None
        await asyncio.sleep(0.3)
        third = await be.claim("p", "thief", block_s=1.0)
        assert third is not None and third.attempt == 3 > be.max_attempts
        await be.dead_letter(third, "max_attempts")
        dead = await be.dead_letters("p")
        assert dead == [{"job": j.id, "attempts": "3", "reason": "max_attempts"}]
        await asyncio.sleep(0.3)
        assert await be.claim("p", "thief", block_s=0.05) is None
    finally:
        await be.close()
        await _cleanup(prefix)


@pytest.fixture(params=["memory", "redis"])
async def two_gateways(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[JobBackend, JobBackend]]:
    """Two gateways' backends on one store, each capping a tenant at 2 jobs."""
    if request.param == "memory":
        one = MemoryJobs(max_per_tenant=2)
        yield one, one
        return
    uri = f"{REDIS}?prefix=test-gw-{uuid.uuid4().hex[:8]}"
    first, second = RedisJobs(uri, max_per_tenant=2), RedisJobs(uri, max_per_tenant=2)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()
        await _cleanup(split_uri(uri)[1])


async def test_a_tenant_at_its_job_cap_is_refused_and_others_are_not(
    two_gateways: tuple[JobBackend, JobBackend],
) -> None:
    a, b = two_gateways
    first, second = job(), job()
    await a.submit(first)
    await b.submit(second)  # the cap counts every gateway's jobs
    assert await a.active("acme") == await b.active("acme") == 2
    refused = job()
    with pytest.raises(TooManyJobs) as info:
        await b.submit(refused)
    assert info.value.limit == 2 and info.value.tenant == "acme"
    assert await a.get(refused.id) is None, "a refused job must leave nothing behind"
    await a.submit(job(tenant="globex"))  # another tenant is not affected
    # A job that finished frees its place; one still running does not.
    running = await a.get(first.id)
    assert running is not None
    running.status = "running"
    await a.save(running)
    with pytest.raises(TooManyJobs):
        await a.submit(job())
    running.status = "succeeded"
    await a.save(running)
    assert await b.active("acme") == 1
    await b.submit(job())
    assert await a.active("acme") == 2


async def test_redis_forgets_a_capped_job_whose_record_is_gone() -> None:
    """A job record that expired or was deleted without its removal from the active set
    (a gateway died in between) must not keep the tenant out for good."""
    uri = f"{REDIS}?prefix=test-gw-{uuid.uuid4().hex[:8]}"
    be = RedisJobs(uri, max_per_tenant=1)
    r = aioredis.Redis.from_url(REDIS)
    try:
        lost = job()
        await be.submit(lost)
        with pytest.raises(TooManyJobs):
            await be.submit(job())
        await r.delete(f"{be.prefix}:job:{lost.id}")
        await be.submit(job())
        assert await be.active("acme") == 1
    finally:
        await r.aclose()
        await be.close()
        await _cleanup(be.prefix)


def test_split_uri_keeps_other_parameters() -> None:
    url, prefix = split_uri("redis://127.0.0.1:6379/2?prefix=gw1&socket_timeout=5")
    assert prefix == "gw1" and url == "redis://127.0.0.1:6379/2?socket_timeout=5"
    assert split_uri("redis://h:1/0")[1] == "infermeter:gateway"
