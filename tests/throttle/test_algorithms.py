"""Pure algorithm modules: arithmetic only, injected time."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.throttle.algorithms import autoscale, budgets, costs, fairshare, gcra, leases

T0 = 1_800_000_000.0


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.1, 100.0),
    burst=st.floats(1.0, 50.0),
    steps=st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.01, 5.0)), max_size=60),
)
def test_gcra_never_admits_more_than_burst_plus_rate_times_time(
    rate: float, burst: float, steps: list[tuple[float, float]]
) -> None:
    tat, now, admitted = T0, T0, 0.0
    biggest = 0.0
    for gap, cost in steps:
        now += gap
        result = gcra.check(tat, now, cost, rate, burst)
        if result.allowed:
            tat = result.tat
            admitted += cost
            biggest = max(biggest, cost)
    # at most the burst (or one oversized request when the bucket was full) plus the refill
    assert admitted <= max(burst, biggest) + rate * (now - T0) + 1e-6


def test_gcra_retry_after_is_exact() -> None:
    r = gcra.check(T0, T0, 5.0, 1.0, 5.0)
    assert r.allowed and r.remaining == pytest.approx(0.0)
    denied = gcra.check(r.tat, T0, 2.0, 1.0, 5.0)
    assert not denied.allowed and denied.retry_after_s == pytest.approx(2.0)
    assert gcra.check(r.tat, T0 + 2.0, 2.0, 1.0, 5.0).allowed


def test_gcra_unlimited_and_adjust() -> None:
    assert gcra.check(T0, T0, 1e9, 0.0, 0.0).allowed
    assert gcra.adjust(T0 + 3, T0, -10.0, 1.0) == T0  # a refund never banks beyond full
    assert gcra.adjust(T0 + 3, T0, 2.0, 1.0) == T0 + 5
    # a TAT in the past is a full bucket: a debit is taken from now, however old the TAT
    assert gcra.adjust(T0 - 50, T0, 2.0, 1.0) == T0 + 2
    assert gcra.adjust(T0 - 1, T0, 2.0, 1.0) == gcra.adjust(T0, T0, 2.0, 1.0)
    assert gcra.state(T0 + 2, T0, 1.0, 5.0) == (pytest.approx(3.0), pytest.approx(2.0))


def test_leases_purge_and_retry() -> None:
    held = {"a": T0 + 5, "b": T0 + 10, "c": T0}
    assert leases.purge(held, T0) == ["c"] and set(held) == {"a", "b"}
    assert not leases.has_slot(2, 2) and leases.has_slot(1, 2) and leases.has_slot(99, 0)
    assert leases.retry_after(held, T0) == 5


def test_budget_windows_are_utc_calendar() -> None:
    now = 1_798_761_599.0  # 2026-12-31 23:59:59 UTC
    day, month = budgets.day_window(now), budgets.month_window(now)
    assert (day.key, month.key) == ("20261231", "202612")
    assert day.end == now + 1 and month.end == now + 1
    assert budgets.day_window(now + 1).key == "20270101"
    assert budgets.fits(0.5, 0.5, 1.0) and not budgets.fits(0.6, 0.5, 1.0)
    assert budgets.fits(1e9, 1.0, 0.0) and math.isinf(budgets.remaining(5.0, 0.0))


def test_fairshare_rules() -> None:
    hot = fairshare.FairParams(True, 1.0, 3.0, 30.0, 1.0)
    assert fairshare.min_active([("a", 5.0), ("b", 2.0), ("me", 0.0)], "me") == 2.0
    assert fairshare.min_active([("me", 1.0)], "me") is None
    assert fairshare.lift(0.5, False, 2.0) == 2.0 and fairshare.lift(0.5, True, 2.0) == 0.5
    assert fairshare.admits(3.0, 2.0, hot) and not fairshare.admits(3.1, 2.0, hot)
    assert fairshare.admits(99.0, 2.0, fairshare.FairParams(False, 1.0, 3.0, 30.0, 1.0))
    assert fairshare.admits(99.0, None, hot)  # alone: work-conserving
    assert fairshare.charge(1.0, 2.0, 2.0, 0.0, 3.0) == 2.0
    assert fairshare.charge(2.5, 4.0, 1.0, 0.0, 3.0) == 3.0  # capped at floor + max_lead


def test_costs() -> None:
    assert costs.usage_cost(100, 40, 10, 0.01, 0.02, 0.25) == pytest.approx((60 + 10) * 0.01 + 0.2)
    assert costs.usage_cost(10, 50, 0, 1.0, 0.0, 0.0) == 0.0  # cached capped at prompt
    assert costs.estimate_cost(100, 50, 0.01, 0.02) == pytest.approx(2.0)


def test_hpa_rule_tolerance_and_driver() -> None:
    d = autoscale.desire("num_requests_waiting", 2, 15.0, 5.0, 0.1)
    assert d.desired == 6 and d.ratio == pytest.approx(3.0)
    assert autoscale.desire("kv", 4, 0.84, 0.8, 0.1).desired == 4  # within tolerance
    assert autoscale.desire("kv", 4, 0.9, 0.8, 0.1).desired == 5
    assert autoscale.desire("kv", 0, 1.6, 0.8, 0.1).desired == 2  # wakes an empty pool
    raw, driver, _ = autoscale.raw_recommendation(
        2, {"a": 15.0, "b": 0.4}, {"a": 5.0, "b": 0.8, "c": 1.0}, 0.1, 1, 10
    )
    assert (raw, driver) == (6, "a")
    assert autoscale.raw_recommendation(2, {"a": 100.0}, {"a": 1.0}, 0.1, 1, 10)[:2] == (
        10,
        "max_replicas",
    )
    assert autoscale.raw_recommendation(3, {}, {"a": 1.0}, 0.1, 1, 10)[:2] == (3, "none")


def test_stabilisation_up_immediate_down_after_window() -> None:
    history = [(T0, 4), (T0 + 100, 2)]
    assert autoscale.stabilise(4, history, T0 + 100, 0.0, 300.0) == 4  # down waits
    assert autoscale.stabilise(4, [(T0 + 100, 2)], T0 + 100, 0.0, 300.0) == 2
    assert autoscale.stabilise(2, [(T0 - 10, 2), (T0, 5)], T0, 0.0, 300.0) == 5
    assert autoscale.stabilise(2, [(T0 - 10, 3), (T0, 5)], T0, 60.0, 300.0) == 3
    # a fresh throttle (history since T0) does not scale down before one full window
    assert autoscale.stabilise(4, [(T0, 1)], T0, 0.0, 300.0, history_since=T0) == 4
    assert autoscale.stabilise(4, [(T0 + 300, 1)], T0 + 300, 0.0, 300.0, history_since=T0) == 1
