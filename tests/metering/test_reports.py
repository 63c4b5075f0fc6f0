"""Reports read rollups; they must agree with the hourly detail they are built from."""

from __future__ import annotations

from datetime import timedelta

import pytest

from infermeter.kernel.price_catalog import Catalog
from infermeter.metering.allocation import Allocator
from infermeter.metering.ingest import Ingestor
from infermeter.metering.reports import Reports
from infermeter.metering.settings import ReplicaSettings
from infermeter.metering.store import Store
from tests.metering.conftest import T0, ground_truth_workload, ingest


@pytest.mark.parametrize("share_idle", [False, True])
def test_rollup_reports_match_detail(
    store: Store, ingestor: Ingestor, catalog: Catalog, share_idle: bool
) -> None:
    per_s = {"r1": catalog.usd_per_hour("l4") / 3600, "r2": catalog.usd_per_hour("h100-sxm") / 3600}
    truth = ground_truth_workload(per_s, hours=2, seed=3)
    ingest(ingestor, truth.records)
    replicas = {
        "r1": ReplicaSettings(gpu="l4", pool="small"),
        "r2": ReplicaSettings(gpu="h100-sxm", pool="big"),
    }
    # two runs, the second overlapping the first, as the service loop does
    allocator = Allocator(store, catalog, replicas=replicas)
    allocator.run(T0, T0 + timedelta(minutes=75))
    allocator.run(T0 + timedelta(minutes=30), T0 + timedelta(hours=2))
    reports = Reports(store, catalog, share_idle=share_idle)
    since, until = T0.replace(tzinfo=None), (T0 + timedelta(days=1)).replace(tzinfo=None)
    replica_cost = sum(truth.replica_cost.values())
    for by in ("tenant", "model", "feature", "api_key", "replica", "pool"):
        for granularity in ("hour", "day", "total"):
            report = reports.cost(by, since, until, granularity)
            t = report["totals"]
            assert t["allocated_usd"] + t["idle_usd"] == pytest.approx(replica_cost, abs=1e-3)
            if share_idle:
                assert t["idle_shared_usd"] == pytest.approx(t["idle_usd"], rel=0.01)
    by_tenant = {r["tenant"]: r for r in reports.cost("tenant", since, until, "total")["rows"]}
    for tenant, row in by_tenant.items():
        detail = reports.cost("model", since, until, "total", tenant=tenant)["rows"]
        assert sum(r["cost_usd"] for r in detail) == pytest.approx(row["cost_usd"], abs=1e-6)
        assert sum(r["requests"] for r in detail) == row["requests"]
        assert sum(r["idle_share_usd"] for r in detail) == pytest.approx(
            row["idle_share_usd"], abs=1e-5
        )
        for by in ("feature", "api_key"):  # from the hourly detail, all replicas together
            rows = reports.cost(by, since, until, "hour", tenant=tenant)["rows"]
            assert sum(r["cost_usd"] for r in rows) == pytest.approx(row["cost_usd"], abs=1e-6)
            assert sum(r["requests"] for r in rows) == row["requests"]
            # floored per detail row rather than per replica-hour: micro-dollars apart
            assert sum(r["idle_share_usd"] for r in rows) == pytest.approx(
                row["idle_share_usd"], abs=1e-4
            )
        spent = reports.tenant_spend(tenant, since + timedelta(minutes=7), until)
        hourly = reports.tenant_spend(tenant, since, until)
        assert spent <= hourly + 1e-9
        assert hourly == pytest.approx(row["total_usd"], rel=0.02 if share_idle else 1e-6)
    assert sum(r["requests"] for r in by_tenant.values()) == len(truth.records)
    bvb = reports.buy_vs_build(since, until)["rows"]
    assert sum(r["self_hosted_usd"] for r in bvb) == pytest.approx(
        sum(r["cost_usd"] for r in by_tenant.values()), abs=1e-5
    )
    idle = reports.idle("pool", since, until, "total")
    assert {r["pool"] for r in idle["rows"]} == {"small", "big"}
    assert idle["totals"]["cost_usd"] == pytest.approx(replica_cost, abs=1e-3)


def test_latency_by_replica_and_pool(store: Store, catalog: Catalog, ingestor: Ingestor) -> None:
    from infermeter.kernel.records import UsageRecord
    from infermeter.metering.errors import QueryError

    def rec(i: int, replica: str, pool: str, ttft: float) -> UsageRecord:
        start = T0 + timedelta(seconds=i)
        return UsageRecord(
            request_id=f"lat-{replica}-{i}", tenant="acme", model="llama", pool=pool,
            replica=replica, started_at=start, first_token_at=start + timedelta(seconds=ttft),
            finished_at=start + timedelta(seconds=ttft + 1), ttft_s=ttft,
            prompt_tokens=10, completion_tokens=20,
        )  # fmt: skip

    ingest(
        ingestor,
        [rec(i, "r-fast", "chat", 0.1) for i in range(10)]
        + [rec(i, "r-slow", "chat", 0.9) for i in range(10)]
        + [rec(i, "r-batch", "batch", 2.0) for i in range(5)],
    )
    reports = Reports(store, catalog)
    until = T0 + timedelta(hours=1)
    fleet = reports.latency(T0, until, "total")
    assert [r["requests"] for r in fleet["rows"]] == [25] and "replica" not in fleet["rows"][0]
    per = {r["replica"]: r for r in reports.latency(T0, until, "total", by="replica")["rows"]}
    assert per["r-fast"]["ttft_s"]["p50"] == pytest.approx(0.1)
    assert per["r-slow"]["ttft_s"]["p50"] == pytest.approx(0.9)
    assert per["r-batch"]["requests"] == 5
    pools = {
        r["pool"]: r["requests"] for r in reports.latency(T0, until, "total", by="pool")["rows"]
    }
    assert pools == {"chat": 20, "batch": 5}
    only = reports.latency(T0, until, "total", by="replica", pool="batch")["rows"]
    assert [r["replica"] for r in only] == ["r-batch"]
    with pytest.raises(QueryError):
        reports.latency(T0, until, "total", by="tenant; drop table usage")
