"""One contract suite, every algorithm, every backend (memory, a real Redis, failover over it)."""

from __future__ import annotations

import random

import pytest

from infermeter.throttle.algorithms import budgets
from infermeter.throttle.algorithms.fairshare import FairParams
from infermeter.throttle.storage.base import ReserveRequest, SettleUsage, Storage, UsageRequest
from infermeter.throttle.storage.memory import MemoryStorage
from infermeter.throttle.storage.redis import RedisStorage
from tests.throttle.throttle_helpers import MACHINE_REDIS

T0 = 1_800_000_000.0
NO_FAIR = FairParams(False, 0.0, 0.0, 30.0, 1.0)
_ids = iter(range(1, 10**9))


def req(
    tenant: str = "a",
    cost: float = 1.0,
    now: float = T0,
    *,
    rate: float = 1.0,
    burst: float = 5.0,
    concurrency: int = 0,
    lease_s: float = 60.0,
    daily: float = 0.0,
    monthly: float = 0.0,
    pool: str = "p",
    weight: float = 1.0,
    fair: FairParams = NO_FAIR,
    prompt_price: float = 0.0,
    completion_price: float = 0.0,
) -> ReserveRequest:
    day, month = budgets.day_window(now), budgets.month_window(now)
    return ReserveRequest(
        reservation_id=f"r{next(_ids)}",
        tenant=tenant,
        pool=pool,
        cost=cost,
        now=now,
        rate_per_s=rate,
        burst=burst,
        concurrency=concurrency,
        lease_expires_at=now + lease_s,
        record_expires_at=now + lease_s + 600,
        day_key=day.key,
        day_end=day.end,
        daily_budget=daily,
        month_key=month.key,
        month_end=month.end,
        monthly_budget=monthly,
        weight=weight,
        fair=fair,
        prompt_price=prompt_price,
        completion_price=completion_price,
        cached_factor=0.5,
    )


def usage_req(tenant: str, now: float, rate: float = 1.0, burst: float = 5.0) -> UsageRequest:
    day, month = budgets.day_window(now), budgets.month_window(now)
    return UsageRequest(tenant, now, rate, burst, day.key, month.key, ("p",))


async def test_gcra_allows_burst_then_paces(backend: Storage) -> None:
    allowed = [(await backend.reserve(req(cost=1.0))).allowed for _ in range(7)]
    assert allowed == [True] * 5 + [False] * 2
    denied = await backend.reserve(req(cost=1.0))
    assert denied.reason == "rate"
    assert denied.retry_after_s == pytest.approx(1.0, abs=1e-6)
    assert not (await backend.reserve(req(cost=1.0, now=T0 + 0.9))).allowed
    assert (await backend.reserve(req(cost=1.0, now=T0 + 1.0))).allowed


async def test_gcra_weights_by_cost_and_lets_one_oversized_request_in(backend: Storage) -> None:
    first = await backend.reserve(req(cost=3.0))
    assert first.allowed and first.remaining == pytest.approx(2.0, abs=1e-6)
    assert not (await backend.reserve(req(cost=3.0))).allowed
    assert (await backend.reserve(req(cost=2.0))).allowed
    # a request dearer than the whole burst passes only when the bucket is full
    oversized = await backend.reserve(req(tenant="b", cost=9.0))
    assert oversized.allowed and oversized.reset_s == pytest.approx(9.0, abs=1e-6)
    assert not (await backend.reserve(req(tenant="b", cost=1.0))).allowed
    assert not (await backend.reserve(req(tenant="b", cost=9.0, now=T0 + 8.0))).allowed
    assert (await backend.reserve(req(tenant="b", cost=9.0, now=T0 + 9.0))).allowed


async def test_settle_refunds_and_debits(backend: Storage) -> None:
    # estimate 4 units; actual 100 prompt tokens at 0.01 = 1 unit -> 3 refunded
    r = req(cost=4.0, prompt_price=0.01, completion_price=0.02)
    assert (await backend.reserve(r)).allowed
    assert not (await backend.reserve(req(cost=2.0))).allowed
    done = await backend.settle(r.reservation_id, SettleUsage(100, 0, 0), T0)
    assert done is not None and done.actual == pytest.approx(1.0)
    assert done.delta == pytest.approx(-3.0)
    assert (await backend.reserve(req(cost=2.0))).allowed
    state = await backend.usage(usage_req("a", T0))
    assert state.remaining == pytest.approx(2.0, abs=1e-6)
    assert state.day_spent == pytest.approx(3.0) and state.month_spent == pytest.approx(3.0)
    # extra debit: actual 200 completion tokens = 4 units over an estimate of 1
    r2 = req(tenant="b", cost=1.0, completion_price=0.02)
    assert (await backend.reserve(r2)).allowed
    done2 = await backend.settle(r2.reservation_id, SettleUsage(0, 0, 200), T0)
    assert done2 is not None and done2.delta == pytest.approx(3.0)
    debt = await backend.usage(usage_req("b", T0))
    assert debt.remaining == pytest.approx(1.0, abs=1e-6)
    assert debt.reset_s == pytest.approx(4.0, abs=1e-6)


async def test_settle_debit_on_a_full_bucket_is_taken_from_now(backend: Storage) -> None:
    # the bucket refills long before the settle: the stored TAT (T0 + 1) lies in the past,
    # or has expired in Redis; either way the extra debit of 2 units comes off a full bucket
    r = req(cost=1.0, completion_price=0.01)
    assert (await backend.reserve(r)).allowed
    done = await backend.settle(r.reservation_id, SettleUsage(0, 0, 300), T0 + 100)
    assert done is not None and done.delta == pytest.approx(2.0)
    state = await backend.usage(usage_req("a", T0 + 100))
    assert state.remaining == pytest.approx(3.0, abs=1e-6)
    assert state.reset_s == pytest.approx(2.0, abs=1e-6)
    # a second debit lands on top of the first, not on the stale TAT: 3 - 1 - (2 - 1) = 1
    r2 = req(cost=1.0, now=T0 + 100, completion_price=0.01)
    assert (await backend.reserve(r2)).allowed
    await backend.settle(r2.reservation_id, SettleUsage(0, 0, 200), T0 + 100)
    assert (await backend.usage(usage_req("a", T0 + 100))).remaining == pytest.approx(1.0)


async def test_cached_prompt_tokens_are_priced_by_the_locked_factor(backend: Storage) -> None:
    r = req(cost=1.0, prompt_price=0.01)
    await backend.reserve(r)
    done = await backend.settle(r.reservation_id, SettleUsage(100, 60, 0), T0)
    assert done is not None and done.actual == pytest.approx((40 + 60 * 0.5) * 0.01)


async def test_settle_is_idempotent_and_unknown_is_none(backend: Storage) -> None:
    r = req(cost=2.0, completion_price=0.01)
    await backend.reserve(r)
    first = await backend.settle(r.reservation_id, SettleUsage(0, 0, 100), T0)
    second = await backend.settle(r.reservation_id, SettleUsage(0, 0, 500), T0)
    assert first is not None and not first.duplicate
    assert second is not None and second.duplicate and second.actual == pytest.approx(1.0)
    assert (await backend.usage(usage_req("a", T0))).day_spent == pytest.approx(1.0)
    assert await backend.settle("never-made", SettleUsage(1, 0, 1), T0) is None


def slot(now: float) -> ReserveRequest:
    return req(cost=0.0, concurrency=2, lease_s=30.0, now=now)


async def test_concurrency_leases_expire_when_a_gateway_crashes(backend: Storage) -> None:
    held = [req(cost=0.0, concurrency=2, lease_s=30.0) for _ in range(2)]
    for r in held:
        assert (await backend.reserve(r)).allowed
    denied = await backend.reserve(req(cost=0.0, concurrency=2, lease_s=30.0, now=T0 + 10))
    assert denied.reason == "concurrency" and denied.in_flight == 2
    assert denied.retry_after_s == pytest.approx(20.0)
    # settling one frees its slot at once
    await backend.settle(held[0].reservation_id, SettleUsage(0, 0, 0), T0 + 11)
    assert (await backend.reserve(slot(T0 + 11))).allowed
    # nobody settles: leases lapse after 30 s and the slots come back
    assert not (await backend.reserve(slot(T0 + 12))).allowed
    after = await backend.reserve(slot(T0 + 45))
    assert after.allowed and after.in_flight == 1


async def test_a_hundred_lapsed_leases_all_leave_the_count(backend: Storage) -> None:
    # a crashed gateway held 100 slots; they lapse together (more than one batch of 64)
    for _ in range(100):
        assert (await backend.reserve(req(cost=0.0, rate=0, lease_s=10.0))).allowed
    assert (await backend.reserve(req(cost=0.0, rate=0, lease_s=10.0, now=T0 + 5))).in_flight == 101
    after = await backend.reserve(req(cost=0.0, rate=0, lease_s=10.0, now=T0 + 11))
    assert after.allowed and after.in_flight == 2  # the lease taken at +5 and this one
    state = await backend.usage(usage_req("a", T0 + 11, rate=0))
    assert state.in_flight == 2


async def test_memory_releases_every_lapsed_lease_of_the_pool_at_once() -> None:
    """Memory releases all lapsed leases before each decision; Redis releases those of the
    asking tenant and at most 64 more of the pool per decision (docs/throttle.md)."""
    memory = MemoryStorage()
    hot = FairParams(True, 0.5, 100.0, 1000.0, 1.0)
    for _ in range(100):
        assert (await memory.reserve(req("crashed", 1.0, rate=0, lease_s=10.0, fair=hot))).allowed
    before = await memory.reserve(req("other", 0.0, now=T0 + 5, rate=0, lease_s=1.0, fair=hot))
    assert before.fair_floor == pytest.approx(100.0)  # "crashed" is backlogged
    after = await memory.reserve(req("other", 0.0, now=T0 + 11, rate=0, fair=hot))
    assert after.allowed and after.fair_floor is None  # nobody else has work in flight


async def test_expired_reservation_settles_at_its_estimate(backend: Storage) -> None:
    r = req(cost=2.0, lease_s=10.0)
    await backend.reserve(r)
    # record lives lease + 600 s; after that the estimate stays charged and settle is unknown
    assert await backend.settle(r.reservation_id, SettleUsage(0, 0, 0), T0 + 700) is None
    assert (await backend.usage(usage_req("a", T0 + 700))).day_spent == pytest.approx(2.0)


async def test_daily_and_monthly_budgets(backend: Storage) -> None:
    now = 1_800_000_000.0  # 2027-01-15 08:00 UTC
    day = budgets.day_window(now)
    ok = [
        (await backend.reserve(req(cost=0.4, now=now, rate=0, daily=1.0, monthly=1.5))).allowed
        for _ in range(3)
    ]
    assert ok == [True, True, False]
    denied = await backend.reserve(req(cost=0.4, now=now, rate=0, daily=1.0, monthly=1.5))
    assert (denied.reason, denied.detail) == ("budget", "daily")
    assert denied.retry_after_s == pytest.approx(day.end - now)
    tomorrow = day.end + 1
    next_day = await backend.reserve(req(cost=0.4, now=tomorrow, rate=0, daily=1.0, monthly=1.5))
    assert next_day.allowed
    over = await backend.reserve(req(cost=0.4, now=tomorrow, rate=0, daily=1.0, monthly=1.5))
    assert (over.reason, over.detail) == ("budget", "monthly")


async def test_fair_share_only_under_pressure(backend: Storage) -> None:
    calm = FairParams(False, 1.0, 2.0, 30.0, 2.0)
    hot = FairParams(True, 1.0, 2.0, 30.0, 2.0)
    # a light tenant becomes active, the heavy one takes a lot while the pool is calm
    assert (await backend.reserve(req("light", 0.1, rate=0, fair=calm))).allowed
    for _ in range(5):
        assert (await backend.reserve(req("heavy", 1.0, rate=0, fair=calm))).allowed
    # the counter lead is capped at max_lead over the active minimum
    capped = await backend.reserve(req("heavy", 1.0, rate=0, fair=calm))
    assert capped.fair_counter == pytest.approx(0.1 + 2.0)
    # pressure: heavy leads light by more than the slack -> refused, light is not
    refused = await backend.reserve(req("heavy", 1.0, now=T0 + 1, rate=0, fair=hot))
    assert (refused.reason, refused.retry_after_s) == ("fair_share", 2.0)
    light = await backend.reserve(req("light", 0.1, now=T0 + 1, rate=0, fair=hot))
    assert light.allowed
    # once the light tenant has caught up to within the slack, heavy passes again
    for _ in range(10):
        await backend.reserve(req("light", 0.1, now=T0 + 2, rate=0, fair=hot))
    assert (await backend.reserve(req("heavy", 1.0, now=T0 + 2, rate=0, fair=hot))).allowed


async def test_fair_share_weights_and_reactivation_lift(backend: Storage) -> None:
    hot = FairParams(True, 0.5, 10.0, 30.0, 1.0)
    for _ in range(4):
        assert (await backend.reserve(req("gold", 1.0, rate=0, weight=4.0, fair=hot))).allowed
    assert (await backend.reserve(req("bronze", 1.0, rate=0, fair=hot))).allowed
    # gold has counter 1.0 after 4 units (weight 4), bronze 1.0 after 1 unit
    u = await backend.usage(usage_req("gold", T0, rate=0))
    assert u.fair_counters["p"] == pytest.approx(1.0)
    # a tenant idle beyond the active window is lifted to the active minimum on return
    await backend.reserve(req("late", 0.0, now=T0 + 100, rate=0, fair=hot))
    await backend.reserve(req("gold", 0.0, now=T0 + 100, rate=0, fair=hot))
    back = await backend.reserve(req("late", 0.0, now=T0 + 101, rate=0, fair=hot))
    assert back.fair_counter == pytest.approx(0.0)  # late was active (asked at +100)
    fresh = await backend.reserve(req("newcomer", 0.0, now=T0 + 101, rate=0, fair=hot))
    assert fresh.fair_counter == pytest.approx(0.0)  # min of active others is late's 0.0


async def test_signals_history_and_policy(backend: Storage) -> None:
    await backend.put_signal("p", "r1", {"num_requests_waiting": 3.0}, T0)
    await backend.put_signal("p", "r2", {"num_requests_waiting": 5.0}, T0 - 100)
    fresh = await backend.signals("p", T0 - 30)
    assert [s["num_requests_waiting"] for s in fresh] == [3.0]
    assert "p" in await backend.pools()
    await backend.record_recommendation("p", T0, 2, 60)
    await backend.record_recommendation("p", T0 + 30, 4, 60)
    history = await backend.record_recommendation("p", T0 + 90, 3, 60)
    assert history == [(T0 + 30, 4), (T0 + 90, 3)]
    assert await backend.get_policy() is None
    assert await backend.put_policy("unit = 'usd'") == 1
    assert await backend.put_policy("unit = 'gpu_s'") == 2
    assert await backend.get_policy() == (2, "unit = 'gpu_s'")


PARITY_SEEDS = (7, 13, 22, 29, 36, 1, 2, 3, 4, 5, 6, 8)  # 13/22/29/36 once diverged
PARITY_STEPS = 600
TENANTS = ("t1", "t2", "t3", "t4")


@pytest.mark.parametrize("seed", PARITY_SEEDS)
async def test_redis_matches_memory_on_a_random_workload(seed: int) -> None:
    """The Lua scripts and the memory fast path give identical results, step by step.

    Exact equality, not approximate: both compute in IEEE doubles in the same order and
    Redis stores numbers with %.17g (an exact round trip), so any difference is a bug.
    """
    rng = random.Random(seed)
    memory = MemoryStorage()
    redis_backend = RedisStorage(
        f"{MACHINE_REDIS}?prefix=test:equiv{seed}:{rng.random()}&timeout_ms=3000"
    )
    await redis_backend.clear()
    try:
        now = T0
        open_ids: list[str] = []
        for step in range(PARITY_STEPS):
            now += rng.choice([0.0, 0.05, 0.3, 1.0, 5.0])
            if open_ids and rng.random() < 0.35:
                rid = open_ids.pop(rng.randrange(len(open_ids)))
                used = SettleUsage(rng.randint(0, 300), rng.randint(0, 100), rng.randint(0, 300))
                settled = await memory.settle(rid, used, now)
                assert settled == await redis_backend.settle(rid, used, now), (seed, step)
                continue
            fair = FairParams(rng.random() < 0.5, 0.3, 1.0, 10.0, 1.0)
            r = req(
                rng.choice(TENANTS),
                rng.choice([0.05, 0.2, 0.5, 1.5]),
                now,
                rate=0.5,
                burst=2.0,
                concurrency=3,
                lease_s=rng.choice([2.0, 20.0]),
                daily=40.0,
                weight=rng.choice([1.0, 2.0]),
                fair=fair,
                prompt_price=0.001,
                completion_price=0.002,
            )
            a = await memory.reserve(r)
            b = await redis_backend.reserve(r)
            assert a == b, (seed, step)
            if a.allowed:
                open_ids.append(r.reservation_id)
        for tenant in TENANTS:
            q = UsageRequest(tenant, now, 0.5, 2.0, *_window_keys(now), ("p",))
            assert await memory.usage(q) == await redis_backend.usage(q), (seed, tenant)
    finally:
        await redis_backend.clear()
        await redis_backend.close()


def _window_keys(now: float) -> tuple[str, str]:
    return budgets.day_window(now).key, budgets.month_window(now).key


async def test_idle_tenants_are_forgotten_by_fair_share(backend: Storage) -> None:
    hot = FairParams(True, 1.0, 100.0, 10.0, 1.0)  # forgotten after 10 windows = 100 s
    await backend.reserve(req("other", 1.0, rate=0, fair=hot, lease_s=1000.0))
    lead = await backend.reserve(req("leader", 5.0, rate=0, fair=hot, lease_s=1.0))
    assert lead.fair_counter == pytest.approx(6.0)  # lifted to the floor 1.0, then charged
    # back after 50 s: remembered, it still leads
    again = await backend.reserve(req("leader", 0.0, now=T0 + 50, rate=0, fair=hot))
    assert again.fair_counter == pytest.approx(6.0)
    # away 150 s (> 10 windows): forgotten, it comes back at the floor
    back = await backend.reserve(req("leader", 0.0, now=T0 + 200, rate=0, fair=hot))
    assert back.fair_counter == pytest.approx(1.0) and back.fair_floor == pytest.approx(1.0)
