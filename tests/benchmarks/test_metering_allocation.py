"""Metering at scale: allocation of N requests over 30 days on 20 replicas, then the latency
of the dashboard's typical queries over the result. Data is generated with DuckDB SQL in the
store (tests/benchmarks/metering_data.py).

Run: ./dev.sh bench -k metering_allocation
Sizes: INFERMETER_BENCH_SIZES (default "1000000,10000000"); generated stores are cached in
INFERMETER_BENCH_CACHE (default /tmp/infermeter-bench) and copied before each run."""

from __future__ import annotations

import os
import random
import shutil
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from infermeter.kernel.price_catalog import load_catalog
from infermeter.metering.allocation import Allocator
from infermeter.metering.budgets import Budgets
from infermeter.metering.reports import Reports
from infermeter.metering.settings import BudgetSettings
from infermeter.metering.store import open_store
from tests.benchmarks.metering_data import START, generate, replicas

SIZES = [int(s) for s in os.environ.get("INFERMETER_BENCH_SIZES", "1000000,10000000").split(",")]
CACHE = Path(os.environ.get("INFERMETER_BENCH_CACHE", "/tmp/infermeter-bench"))
DAYS, REPLICAS = 30, 20


def store_for(n: int, work: Path) -> str:
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = CACHE / f"usage-{n}-{DAYS}d-{REPLICAS}r.duckdb"
    if not cached.exists():
        t = time.perf_counter()
        store = open_store(f"duckdb:///{cached}.tmp")
        generate(store, n, DAYS, REPLICAS, samples=True)
        store.close()
        os.replace(f"{cached}.tmp", cached)
        print(f"generated {n:,} requests in {time.perf_counter() - t:.1f} s")
    target = work / f"run-{n}.duckdb"
    shutil.copy(cached, target)
    return f"duckdb:///{target}"


def timed(fn: Callable[[], Any], repeat: int = 5) -> tuple[float, float]:
    fn()  # warm
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples), max(samples)


@pytest.mark.parametrize("n", SIZES)
def test_metering_allocation_and_queries(n: int, tmp_path: Path) -> None:
    uri = store_for(n, tmp_path)
    store = open_store(uri)
    catalog = load_catalog()
    allocator = Allocator(store, catalog, window_s=60, replicas=replicas(REPLICAS))
    t, c = time.perf_counter(), time.process_time()
    result = allocator.run(START, START + timedelta(days=DAYS))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(
        f"\nMETERING-ALLOCATION {n:,} requests / {DAYS} d / {REPLICAS} replicas: "
        f"{wall:.1f} s wall, "
        f"{cpu:.1f} s process CPU; {result.request_windows:,} request-windows, "
        f"{result.replica_windows:,} replica-windows, cost ${result.cost_micro / 1e6:,.2f}, "
        f"idle ${result.idle_micro / 1e6:,.2f}"
    )
    end = START + timedelta(days=DAYS)
    since30 = START.replace(tzinfo=None)
    until = end.replace(tzinfo=None)
    since1 = until - timedelta(days=1)
    reports = Reports(store, catalog, share_idle=True, now=lambda: end.timestamp())
    budgets = Budgets(
        store,
        reports,
        {"tenant-7": BudgetSettings(daily_usd=50, monthly_usd=900)},
        now=lambda: end.timestamp() - 3600,
    )
    ids = [f"req-{random.Random(i).randrange(n)}" for i in range(50)]
    it = iter(ids * 10)
    queries: dict[str, Callable[[], Any]] = {
        "cost by tenant, daily, 30 d": lambda: reports.cost("tenant", since30, until, "day"),
        "cost by model, hourly, 24 h": lambda: reports.cost("model", since1, until, "hour"),
        "cost by feature, total, 30 d": lambda: reports.cost("feature", since30, until, "total"),
        "cost by API key, daily, 30 d": lambda: reports.cost("api_key", since30, until, "day"),
        "tenant's cost by feature, hourly, 24 h": lambda: reports.cost(
            "feature", since1, until, "hour", tenant="tenant-7"
        ),
        "tenant's cost by API key, daily, 30 d": lambda: reports.cost(
            "api_key", since30, until, "day", tenant="tenant-7"
        ),
        "model's cost by replica, hourly, 24 h": lambda: reports.cost(
            "replica", since1, until, "hour", model="model-1"
        ),
        "idle by replica, daily, 30 d": lambda: reports.idle("replica", since30, until, "day"),
        "idle by pool, hourly, 24 h": lambda: reports.idle("pool", since1, until, "hour"),
        "request lookup by id": lambda: reports.request(next(it)),
        "buy vs build, 30 d": lambda: reports.buy_vs_build(since30, until),
        "latency percentiles, hourly, 24 h": lambda: reports.latency(since1, until, "hour"),
        "GPU samples, per minute, 1 h": lambda: reports.gpu(until - timedelta(hours=1), until),
        "budget state of a tenant": lambda: budgets.state("tenant-7"),
        "rates (GET /v1/rates)": reports.rates,
        "calibration": reports.calibration,
    }
    print(f"METERING-QUERIES at {n:,} requests (median / max of 5, ms):")
    for name, fn in queries.items():
        median, worst = timed(fn)
        print(f"  {name:<36} {median:8.1f} {worst:8.1f}")
    store.close()
