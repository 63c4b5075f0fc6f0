"""The memory backend's backlog order (lazy heap with in-place raises) against a brute force."""

from __future__ import annotations

import random

import pytest

from infermeter.throttle.storage.fair_state import PoolFairState


def brute_floor(state: PoolFairState, tenant: str) -> float | None:
    others = [v for name, v in state.backlog.items() if name != tenant]
    return min(others) if others else None


@pytest.mark.parametrize("seed", range(20))
def test_floor_is_the_smallest_other_backlogged_counter(seed: int) -> None:
    rng = random.Random(seed)
    state = PoolFairState()
    tenants = [f"t{i}" for i in range(6)]
    for _ in range(2000):
        tenant = rng.choice(tenants)
        op = rng.random()
        if op < 0.3:
            state.set_counter(tenant, state.counters.get(tenant, 0.0))
            state.acquire(tenant)
        elif op < 0.5 and tenant in state.inflight:
            state.release(tenant)
        elif op < 0.8:  # admission: the counter grows (no heap entry when backlogged)
            state.set_counter(tenant, state.counters.get(tenant, 0.0) + rng.random())
        else:  # settle: a refund or an extra debit
            grown = state.counters.get(tenant, 0.0) + rng.uniform(-1.0, 1.0)
            state.set_counter(tenant, max(0.0, grown))
        asker = rng.choice(tenants)
        assert state.floor(asker) == brute_floor(state, asker)
    # the heap stays bounded by the rebuild rule
    assert len(state.backlog_heap) <= 2 * len(state.backlog) + 65
