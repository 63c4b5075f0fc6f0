"""Idle tenants are forgotten (state, fair-share rows, decision log) once forgetting them can
change no decision; a budget's live spend, a held lease or a draining bucket keeps them."""

from __future__ import annotations

import asyncio

import httpx

from infermeter.throttle.app import Runtime, create_app
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.service import AdmitRequest, Throttle
from infermeter.throttle.settings import ThrottleSettings
from infermeter.throttle.storage.memory import MemoryStorage
from tests.conftest import ManualClock, ServerThread
from tests.throttle.throttle_helpers import POLICY

IDLE_S = 3600.0
# unlisted tenants get "pro" (no budgets); "tiny" is on "free" (daily and monthly budgets)
UNBUDGETED = POLICY.replace('default_tier = "free"', 'default_tier = "pro"')


def make(clock: ManualClock) -> tuple[Throttle, MemoryStorage]:
    storage = MemoryStorage()
    return Throttle(load_policy_text(UNBUDGETED), storage, clock), storage


async def admit(throttle: Throttle, tenant: str, lease_s: float = 60.0) -> str:
    result = await throttle.admit(
        AdmitRequest(tenant=tenant, model="m", max_tokens=10, prompt_tokens=10, lease_s=lease_s)
    )
    assert result.allowed, result.reason
    return result.reservation_id


async def test_an_idle_tenant_is_forgotten_everywhere_and_counted() -> None:
    clock = ManualClock()
    throttle, storage = make(clock)
    rid = await admit(throttle, "t1")
    await throttle.settle(rid, 10, 0, 5)
    await admit(throttle, "t2")  # its lease is never settled: it lapses
    assert {"t1", "t2"} <= set(storage._tenants) and "p1" in storage._pools
    clock.advance(IDLE_S - 1)
    assert await throttle.evict_idle(IDLE_S) == 0  # not idle long enough
    clock.advance(2)
    assert await throttle.evict_idle(IDLE_S) == 2
    assert not storage._tenants and not storage._pools  # fair-share table gone with them
    assert throttle.recorder is not None and throttle.recorder.tenants() == []
    assert throttle.tenants_evicted == 2
    # it comes back as a new tenant: a full bucket, nothing in flight
    usage = await throttle.usage("t1")
    assert usage.usage.in_flight == 0 and usage.usage.day_spent == 0
    await admit(throttle, "t1")


async def test_a_held_lease_or_a_recent_request_keeps_a_tenant() -> None:
    clock = ManualClock()
    throttle, storage = make(clock)
    await admit(throttle, "long", lease_s=3 * IDLE_S)
    await admit(throttle, "busy")
    clock.advance(IDLE_S + 1)
    await admit(throttle, "busy")  # asked again: not idle
    assert await throttle.evict_idle(IDLE_S) == 0
    assert {"long", "busy"} <= set(storage._tenants)
    clock.advance(2 * IDLE_S)  # the long lease lapsed, busy went quiet
    assert await throttle.evict_idle(IDLE_S) == 2


async def test_a_budgets_live_spend_is_never_forgotten() -> None:
    clock = ManualClock()
    throttle, storage = make(clock)
    rid = await admit(throttle, "tiny")
    await throttle.settle(rid, 10, 0, 10)
    spent = (await throttle.usage("tiny")).usage.day_spent
    assert spent > 0
    clock.advance(IDLE_S + 1)
    assert await throttle.evict_idle(IDLE_S) == 0  # forgetting would refund the budget
    assert (await throttle.usage("tiny")).usage.day_spent == spent
    clock.advance(40 * 86400)  # the day and month windows (and their grace) are over
    assert await throttle.evict_idle(IDLE_S) == 1 and "tiny" not in storage._tenants


async def test_a_late_settle_after_eviction_still_applies() -> None:
    clock = ManualClock()
    storage = MemoryStorage()
    policy = load_policy_text(UNBUDGETED.replace("settle_grace_s = 600", "settle_grace_s = 7200"))
    throttle = Throttle(policy, storage, clock)
    rid = await admit(throttle, "t1", lease_s=10)
    clock.advance(IDLE_S + 20)  # lease lapsed, record kept for the settle grace (7200 s)
    assert await throttle.evict_idle(IDLE_S) == 1
    settled = await throttle.settle(rid, 10, 0, 1000)  # more than estimated: an extra debit
    assert settled.actual > settled.estimate and not settled.duplicate
    assert storage._tenants["t1"].tat > clock()  # charged to the fresh state


def test_the_runtime_evicts_and_exposes_the_count() -> None:
    clock = ManualClock()
    runtime = Runtime(
        ThrottleSettings(tenant_idle_s=IDLE_S), now=clock, policy=load_policy_text(UNBUDGETED)
    )
    with ServerThread(create_app(runtime, background=False)) as srv:
        body = {"tenant": "ghost", "model": "m", "max_tokens": 1}
        assert httpx.post(f"{srv.url}/v1/admit", json=body).status_code == 200
        assert "ghost" in httpx.get(f"{srv.url}/v1/tenants").text
        clock.advance(IDLE_S + 1)
        # the step of Runtime.evict_loop (the server is idle meanwhile)
        assert asyncio.run(runtime.throttle.evict_idle(runtime.settings.tenant_idle_s)) == 1
        assert "ghost" not in httpx.get(f"{srv.url}/v1/tenants").text
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert "infermeter_throttle_tenants_evicted_total 1.0" in metrics
