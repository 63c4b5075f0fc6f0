"""Each backend's capabilities hold to its behaviour (every backend, the shared ones on a real
Redis), and the failover reports ``degraded`` while its primary is down and keeps deciding."""

from __future__ import annotations

from typing import cast

import pytest

from infermeter.throttle.errors import StorageUnavailable
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.service import AdmitRequest, Throttle
from infermeter.throttle.storage import with_failover
from infermeter.throttle.storage.base import (
    Capabilities,
    Decision,
    InProcessDecisions,
    Settlement,
    SettleUsage,
    Storage,
)
from infermeter.throttle.storage.failover import FailoverStorage
from infermeter.throttle.storage.memory import MemoryStorage
from infermeter.throttle.storage.redis import RedisStorage
from tests.conftest import ManualClock
from tests.throttle.test_storage_contract import T0, req
from tests.throttle.throttle_helpers import POLICY, RedisServer, open_backend

# what each store under throttle/storage/ claims when healthy
EXPECTED = {
    "memory": Capabilities(in_process_decisions=True, shared_state=False),
    "redis": Capabilities(in_process_decisions=False, shared_state=True),
    "failover": Capabilities(in_process_decisions=False, shared_state=True),
}


async def test_a_healthy_backend_claims_its_capabilities(
    backend_kind: str, backend: Storage
) -> None:
    assert backend.capabilities == EXPECTED[backend_kind]
    assert not backend.capabilities.degraded
    await backend.reserve(req())
    assert backend.capabilities == EXPECTED[backend_kind]  # deciding changes none of them


async def test_in_process_decisions_answer_the_sync_path_as_the_protocol(
    backend: Storage,
) -> None:
    """A backend that claims the in-process path answers ``decide`` / ``settle_now`` exactly
    as ``reserve`` / ``settle``; one that does not is driven through the protocol alone."""
    if not backend.capabilities.in_process_decisions:
        throttle = Throttle(load_policy_text(POLICY), backend, ManualClock(T0))
        admitted = await throttle.admit(AdmitRequest("acme", "m", 100, 100))
        assert admitted.allowed and await backend.has_reservation(admitted.reservation_id)
        settled = await throttle.settle(admitted.reservation_id, 100, 0, 10)
        assert not settled.duplicate and settled.actual < settled.estimate
        return
    sync = cast(InProcessDecisions, backend)
    for step in range(7):  # the burst of 5 and two refusals, two tenants in their own pools
        now = T0 + step * 0.1
        protocol = req("by-protocol", 1.0, now, pool="p", completion_price=0.01)
        flat = req("in-process", 1.0, now, pool="q", completion_price=0.01)
        expected = await backend.reserve(protocol)
        answer = sync.decide(
            flat.reservation_id,
            flat.tenant,
            flat.cost,
            flat.now,
            flat.lease_expires_at,
            flat.record_expires_at,
            flat.day_key,
            flat.day_end,
            flat.month_key,
            flat.month_end,
            flat.fair,
            (
                flat.pool,
                flat.rate_per_s,
                flat.burst,
                flat.concurrency,
                flat.daily_budget,
                flat.monthly_budget,
                flat.weight,
                flat.prompt_price,
                flat.completion_price,
                flat.cached_factor,
            ),
        )
        assert isinstance(answer, Decision) and answer == expected, step
        if not answer.allowed:
            continue
        assert await backend.has_reservation(flat.reservation_id)
        done = await backend.settle(protocol.reservation_id, SettleUsage(0, 0, 50), now)
        now_done = sync.settle_now(flat.reservation_id, 0, 0, 50, now)
        assert isinstance(now_done, Settlement) and done is not None
        assert now_done[3:] == done[3:]  # estimate, actual, duplicate (ids and tenant differ)
    assert sync.settle_now("never-made", 1, 0, 1, T0) is None


async def test_shared_state_is_seen_through_a_second_handle(
    backend_kind: str, backend_uri: str, backend: Storage
) -> None:
    r = req()
    assert (await backend.reserve(r)).allowed
    twin = open_backend(backend_kind, backend_uri)
    try:
        assert await twin.has_reservation(r.reservation_id) is backend.capabilities.shared_state
    finally:
        await twin.close()


async def test_only_shared_backends_are_wrapped_for_failover(backend: Storage) -> None:
    wrapped = with_failover(backend, ManualClock())
    assert (wrapped is backend) is not backend.capabilities.shared_state
    assert wrapped.capabilities.shared_state == backend.capabilities.shared_state
    assert not wrapped.capabilities.in_process_decisions or wrapped is backend


@pytest.mark.parametrize("fail_closed", [False, True])
async def test_failover_reports_degraded_while_its_primary_is_down(
    redis_server: RedisServer, fail_closed: bool
) -> None:
    clock = ManualClock()
    storage = with_failover(RedisStorage(redis_server.uri), clock, fail_closed=fail_closed)
    assert isinstance(storage, FailoverStorage)
    throttle = Throttle(load_policy_text(POLICY), storage, clock)
    try:
        assert (await throttle.admit(AdmitRequest("t1", "m", 1000, 100))).allowed
        assert storage.capabilities == EXPECTED["failover"]
        redis_server.stop()
        # the primary alone does not degrade: unreachable, it raises rather than decides
        assert not storage.primary.capabilities.degraded
        with pytest.raises(StorageUnavailable):
            await storage.primary.reserve(req())
        answers = [await throttle.admit(AdmitRequest("t1", "m", 1000, 100)) for _ in range(3)]
        assert storage.capabilities.degraded and storage.degraded
        assert not storage.capabilities.in_process_decisions  # still through reserve()
        assert storage.capabilities.shared_state
        assert not storage.local.capabilities.degraded  # the side in force is healthy
        if fail_closed:
            assert [(a.allowed, a.reason) for a in answers] == [(False, "unavailable")] * 3
        else:  # decided locally, tier limits still apply (two requests fit the burst)
            assert [a.allowed for a in answers] == [True, True, False]
            assert answers[2].reason == "rate"
        assert storage.local_decisions == 3
        clock.advance(60.0)
        assert (await throttle.admit(AdmitRequest("t1", "m", 1000, 100))).allowed != fail_closed
        assert not await storage.probe() and storage.capabilities.degraded
        redis_server.start()
        assert await storage.probe()
        assert storage.capabilities == EXPECTED["failover"]
        assert (await throttle.admit(AdmitRequest("t1", "m", 1000, 100))).allowed
    finally:
        await storage.close()


def test_memory_is_the_in_process_backend() -> None:
    """The service's fast path needs ``decide`` and ``settle_now``: what the claim promises."""
    memory = MemoryStorage()
    assert memory.capabilities.in_process_decisions
    assert callable(memory.decide) and callable(memory.settle_now)
