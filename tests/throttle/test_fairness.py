"""The fairness experiment: fair share vs a plain requests-per-minute limiter.

One heavy tenant (3 req/s of 8 units) and nine light ones (0.4 req/s of 1 unit each) on a
pool that serves 10 units/s: demand is 2.8x capacity. Both runs drive the real Throttle and
PoolMonitor with an injected clock (see throttle/experiments/fairness.py).
"""

from __future__ import annotations

import asyncio

import pytest

from infermeter.throttle.experiments.fairness import HEAVY, LIGHTS, RunResult, fair_latency_s, run
from infermeter.throttle.experiments.figure import fairness_svg


@pytest.fixture(scope="module")
def runs() -> tuple[RunResult, RunResult, RunResult]:
    return (
        asyncio.run(run("fair")),
        asyncio.run(run("rpm")),
        asyncio.run(run("fair", heavy_rps=1e-9)),
    )


def test_fair_share_keeps_light_tenants_whole(runs: tuple[RunResult, RunResult, RunResult]) -> None:
    fair, _, _ = runs
    max_min = sum(fair.max_min_shares()[t] for t in LIGHTS)
    # light tenants get (almost) all they ask for: their max-min fair share of the pool
    assert fair.light_demand_served() >= 0.97
    assert fair.light_share() == pytest.approx(max_min, abs=0.03)
    assert sum(fair.tenants[t].refused for t in LIGHTS) <= 0.01 * sum(
        fair.tenants[t].sent for t in LIGHTS
    )
    # their latency stays near what an exactly fair split would give them
    assert fair.light_latency(0.5) <= 2.0 * fair_latency_s()
    # the heavy tenant is held back, not starved: it gets the rest of the pool
    heavy = fair.tenants[HEAVY]
    assert heavy.refused > 0.5 * heavy.sent
    assert fair.share(HEAVY) == pytest.approx(fair.max_min_shares()[HEAVY], abs=0.03)
    served = sum(t.served for t in fair.tenants.values()) / fair.duration_s
    assert served >= 0.9 * fair.capacity  # work-conserving
    assert 0.1 < fair.pressure_fraction < 0.95  # fair share engaged only under pressure


def test_rpm_limiter_lets_the_heavy_tenant_crowd_out_the_light_ones(
    runs: tuple[RunResult, RunResult, RunResult],
) -> None:
    fair, rpm, alone = runs
    assert rpm.light_demand_served() < 0.9
    assert rpm.share(HEAVY) > rpm.max_min_shares()[HEAVY] + 0.03
    assert rpm.light_latency(0.5) > 5 * fair.light_latency(0.5)
    assert rpm.light_latency(0.95) > 5 * fair.light_latency(0.95)
    assert alone.light_latency(0.5) < fair.light_latency(0.5)  # the price of sharing
    svg = fairness_svg(fair, rpm, alone, fair_latency_s())
    assert svg.startswith("<svg") and "fair share (VTC)" in svg and "requests-per-minute" in svg
