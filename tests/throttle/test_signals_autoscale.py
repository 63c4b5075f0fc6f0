"""Pool pressure and replica recommendations over a scripted load curve (injected clock)."""

from __future__ import annotations

import random

import pytest

from infermeter.throttle.errors import RequestError, UnknownPool
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.signals import PoolMonitor, keda_body
from infermeter.throttle.storage.memory import MemoryStorage
from tests.conftest import ManualClock
from tests.throttle.throttle_helpers import POLICY


def monitor(clock: ManualClock) -> PoolMonitor:
    policy = load_policy_text(POLICY)
    return PoolMonitor(lambda: policy, MemoryStorage(), clock)


async def push(
    m: PoolMonitor, clock: ManualClock, replicas: int, waiting: float, kv: float
) -> None:
    await m.ingest(
        [
            {
                "pool": "p1",
                "replica": f"r{i}",
                "ts": clock(),
                "num_requests_waiting": waiting,
                "kv_cache_usage_perc": kv,
                "num_requests_running": 8,
            }
            for i in range(replicas)
        ]
    )


async def test_scale_up_within_one_evaluation_of_a_sustained_breach() -> None:
    clock = ManualClock()
    m = monitor(clock)
    await push(m, clock, 2, 1.0, 0.3)
    _, rec = await m.recommend("p1")
    assert rec.desired == 2 and rec.driver in ("num_requests_waiting", "kv_cache_usage_perc")
    clock.advance(15)
    await push(m, clock, 2, 12.0, 0.5)  # queue 12 per replica vs target 5
    state, rec = await m.recommend("p1")
    assert (rec.desired, rec.driver) == (5, "num_requests_waiting")
    body = keda_body(state, rec, clock())
    assert body["desired_replicas"] == 5 and body["driver"] == "num_requests_waiting"
    assert body["signals"]["num_requests_waiting"]["observed"] == 12.0
    assert body["pressure"] is True and "queue" in body["saturated"]


async def test_no_flapping_on_noise_and_scale_down_only_after_the_window() -> None:
    clock = ManualClock()
    m = monitor(clock)
    rng = random.Random(3)
    # 4 replicas at their target +-8% for 20 minutes: never moves (tolerance 10%)
    answers = []
    for _ in range(80):
        await push(m, clock, 4, 5.0 * rng.uniform(0.92, 1.08), 0.8 * rng.uniform(0.92, 1.08))
        answers.append((await m.recommend("p1"))[1].desired)
        clock.advance(15)
    assert set(answers) == {4}
    # spikes up and down around a stable load: scale-ups are immediate, scale-downs wait
    await push(m, clock, 4, 1.0, 0.2)  # load drops to a fifth
    drop_at = clock()
    downs = []
    while clock() - drop_at < 400:
        downs.append((clock() - drop_at, (await m.recommend("p1"))[1].desired))
        clock.advance(15)
        await push(m, clock, 4, 1.0, 0.2)
    before_window = [d for t, d in downs if t < 300]
    after_window = [d for t, d in downs if t >= 300]
    assert set(before_window) == {4}
    assert after_window and set(after_window) == {1}


async def test_min_max_and_unknown_pool() -> None:
    clock = ManualClock()
    m = monitor(clock)
    await push(m, clock, 2, 500.0, 1.0)
    _, rec = await m.recommend("p1")
    assert (rec.desired, rec.driver) == (8, "max_replicas")
    with pytest.raises(UnknownPool):
        await m.recommend("nope")
    # a pool seen only in signals is known; without data it answers min, never empty
    await m.ingest({"pool": "other", "replica": "x", "ts": clock()})
    _, other = await m.recommend("other")
    assert other.desired == 1


async def test_pressure_conditions_and_hold() -> None:
    clock = ManualClock()
    m = monitor(clock)
    await push(m, clock, 2, 0.0, 0.85)
    assert m.pressure("p1") and m.states["p1"].saturated == ["kv_cache"]
    clock.advance(5)
    await push(m, clock, 2, 0.0, 0.2)
    assert m.pressure("p1")  # held for pressure_hold_s = 10
    clock.advance(6)
    await push(m, clock, 2, 0.0, 0.2)
    assert not m.pressure("p1")
    await m.ingest({"pool": "p1", "replica": "r0", "ts": clock(), "ttft_p95_s": 3.0})
    assert "ttft" in m.states["p1"].saturated
    clock.advance(60)
    for waiting in (0.0, 1.0, 2.0, 3.0):  # growing queue, below the per-replica threshold
        await push(m, clock, 2, waiting, 0.2)
        clock.advance(5)
    assert m.states["p1"].saturated == ["queue_growing"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"replica": "r"}, "pool"),
        ({"pool": "p", "replica": ""}, "replica"),
        ({"pool": "p", "replica": "r", "kv_cache_usage_perc": 1.5}, "kv_cache_usage_perc"),
        ({"pool": "p", "replica": "r", "num_requests_waiting": -1}, "num_requests_waiting"),
        ({"pool": "p", "replica": "r", "ttft_p95_s": "slow"}, "ttft_p95_s"),
        ([{"pool": "p", "replica": "r"}, {"pool": "p"}], "[1].replica"),
    ],
)
async def test_bad_signals_name_the_field(body: object, field: str) -> None:
    m = monitor(ManualClock())
    with pytest.raises(RequestError) as info:
        await m.ingest(body)
    assert info.value.field == field
