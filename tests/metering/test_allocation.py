"""Allocation: the per-window invariant (hypothesis), ground truth within 1%, and policies."""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infermeter.kernel.price_catalog import Catalog
from infermeter.kernel.records import UsageRecord
from infermeter.metering.allocation import Allocator
from infermeter.metering.context_weights import ContextWeightBook
from infermeter.metering.ingest import Ingestor
from infermeter.metering.request_cost import RequestCosts
from infermeter.metering.settings import ReplicaSettings
from infermeter.metering.store import Store, open_store
from tests.metering.conftest import T0, ground_truth_workload, ingest

GPUS = [
    ("h100-sxm", ""),
    ("h100-sxm", "3g.40gb"),
    ("h100-sxm", "1g.10gb"),
    ("l4", ""),
    ("a100-80gb", "2g.20gb"),
]


def request_windows(store: Store, catalog: Catalog) -> pa.Table:
    """Every request's cost per window, as the request lookup recomputes it."""
    cur = store.cursor()
    try:
        result = cur.execute("SELECT * FROM usage ORDER BY request_id")
        names = [d[0] for d in result.description or []]
        records = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
        costs = RequestCosts(catalog, ContextWeightBook())
        rows = [
            (r["request_id"], r["tenant"], w["replica"], w["window_start"], w["cost_micro"],
             w["stale"])
            for r in records
            for w in costs.windows(cur, r)
        ]  # fmt: skip
    finally:
        cur.close()
    columns = ["request_id", "tenant", "replica", "window_start", "cost_micro", "stale"]
    return pa.table(
        {c: pa.array([row[i] for row in rows]) for i, c in enumerate(columns)}
        if rows
        else {c: pa.array([], t) for c, t in zip(columns, COLUMN_TYPES, strict=True)}
    )


COLUMN_TYPES = [pa.string(), pa.string(), pa.string(), pa.timestamp("us"), pa.int64(), pa.bool_()]


def invariant_violations(store: Store, catalog: Catalog) -> list[tuple[object, ...]]:
    con = store.connection
    windows = request_windows(store, catalog)
    assert not any(windows.column("stale").to_pylist())  # the lookup reproduces the run
    con.register("request_window", windows)
    return con.execute(
        """
        SELECT rw.replica, rw.window_start, rw.cost_micro, rw.allocated_micro, rw.idle_micro,
               coalesce(s.total, 0), coalesce(s.min_cost, 0)
        FROM replica_window rw
        LEFT JOIN (SELECT replica, window_start, sum(cost_micro) AS total,
                          min(cost_micro) AS min_cost
                   FROM request_window GROUP BY ALL) s USING (replica, window_start)
        WHERE rw.allocated_micro + rw.idle_micro <> rw.cost_micro
           OR coalesce(s.total, 0) <> rw.allocated_micro
           OR coalesce(s.min_cost, 0) < 0 OR rw.idle_micro < 0 OR rw.allocated_micro < 0
        """
    ).fetchall()


request_strategy = st.fixed_dictionaries(
    {
        "replica": st.integers(0, 2),
        "start_s": st.floats(0, 900, allow_nan=False),
        "queue_s": st.one_of(st.none(), st.floats(0, 5, allow_nan=False)),
        "prefill_s": st.floats(0, 30, allow_nan=False),
        "decode_s": st.floats(0, 200, allow_nan=False),
        "prompt": st.integers(0, 20000),
        "cached_frac": st.floats(0, 1),
        "completion": st.integers(0, 4000),
        "has_first_token": st.booleans(),
        "status": st.sampled_from(["ok", "ok", "client_abort", "error", "throttled"]),
        "tenant": st.sampled_from(["a", "b", "c"]),
    }
)


@settings(
    max_examples=35,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    requests=st.lists(request_strategy, min_size=0, max_size=40),
    gpus=st.lists(st.sampled_from(GPUS), min_size=3, max_size=3),
    counts=st.lists(st.integers(1, 8), min_size=3, max_size=3),
    window_s=st.sampled_from([10, 30, 60, 300]),
    offset_s=st.floats(0, 3000, allow_nan=False),
)
def test_invariant_allocated_plus_idle_equals_cost(
    catalog: Catalog,
    requests: list[dict[str, object]],
    gpus: list[tuple[str, str]],
    counts: list[int],
    window_s: int,
    offset_s: float,
) -> None:
    store = open_store("duckdb:///:memory:")
    try:
        base = T0 + timedelta(seconds=offset_s)
        records = []
        for i, r in enumerate(requests):
            start = base + timedelta(seconds=float(r["start_s"]))  # type: ignore[arg-type]
            queue = r["queue_s"]
            prefill_end = start + timedelta(seconds=(queue or 0) + float(r["prefill_s"]))  # type: ignore[arg-type,operator]
            finish = prefill_end + timedelta(seconds=float(r["decode_s"]))  # type: ignore[arg-type]
            prompt = int(r["prompt"])  # type: ignore[call-overload]
            records.append(
                UsageRecord(
                    request_id=f"h-{i}",
                    tenant=str(r["tenant"]),
                    model="m",
                    replica=f"r{r['replica']}",
                    started_at=start,
                    first_token_at=prefill_end if r["has_first_token"] else None,
                    finished_at=finish,
                    queue_s=queue,  # type: ignore[arg-type]
                    status=str(r["status"]),
                    prompt_tokens=prompt,
                    cached_prompt_tokens=int(prompt * float(r["cached_frac"])),  # type: ignore[arg-type]
                    completion_tokens=int(r["completion"]),  # type: ignore[call-overload]
                )
            )
        ingest(Ingestor(store, lambda: T0.timestamp()), records)
        replicas = {
            f"r{i}": ReplicaSettings(gpu=g, mig_profile=m, count=c)
            for i, ((g, m), c) in enumerate(zip(gpus, counts, strict=True))
        }
        allocator = Allocator(store, catalog, window_s=window_s, replicas=replicas)
        result = allocator.run(T0, base + timedelta(seconds=1500))
        assert invariant_violations(store, catalog) == []
        windows = store.connection.execute("SELECT count(*) FROM replica_window").fetchone()
        assert windows is not None and windows[0] == result.replica_windows > 0
        # every priced replica-window's cost is the configured price x window length
        expected = {
            name: round(
                catalog.usd_per_hour(r.gpu, r.mig_profile) * r.count * window_s / 3600 * 1e6
            )
            for name, r in replicas.items()
        }
        for replica, cost in store.connection.execute(
            "SELECT DISTINCT replica, cost_micro FROM replica_window"
        ).fetchall():
            assert cost == expected[replica]
    finally:
        store.close()


PRICES = {
    "r-h100": ("h100-sxm", "", 1),
    "r-mig": ("h100-sxm", "3g.40gb", 1),
    "r-l4x2": ("l4", "", 2),
}


def price_per_s(catalog: Catalog) -> dict[str, float]:
    """$ per second of each replica in :data:`PRICES` (the ground-truth workload's input)."""
    return {
        name: catalog.usd_per_hour(gpu, mig) * count / 3600
        for name, (gpu, mig, count) in PRICES.items()
    }


def priced_replicas() -> dict[str, ReplicaSettings]:
    """The replicas of :data:`PRICES` as metering configuration."""
    return {n: ReplicaSettings(gpu=g, mig_profile=m, count=c) for n, (g, m, c) in PRICES.items()}


def test_ground_truth_tenants_and_idle_within_one_percent(
    store: Store, ingestor: Ingestor, catalog: Catalog
) -> None:
    per_s = price_per_s(catalog)
    truth = ground_truth_workload(per_s, hours=3)
    assert len(truth.records) > 300
    ingest(ingestor, truth.records)
    replicas = priced_replicas()
    allocator = Allocator(store, catalog, window_s=60, replicas=replicas)
    result = allocator.run(T0, T0 + timedelta(hours=truth.hours))
    assert result.unpriced_requests == 0
    [calib] = result.calibrations
    assert calib.source == "fit" and calib.r2 is not None and calib.r2 > 0.9
    assert calib.decode_s_per_token / calib.prefill_s_per_token == pytest.approx(75, rel=0.1)
    con = store.connection
    got = dict(
        con.execute(
            "SELECT tenant, sum(cost_micro) / 1e6 FROM cost_hourly GROUP BY tenant"
        ).fetchall()
    )
    assert set(got) == set(truth.tenant_cost)
    for tenant, true_cost in truth.tenant_cost.items():
        assert got[tenant] == pytest.approx(true_cost, rel=0.01), tenant
    idle = dict(
        con.execute(
            "SELECT replica, sum(idle_micro) / 1e6 FROM replica_window GROUP BY replica"
        ).fetchall()
    )
    for replica, true_idle in truth.idle_cost.items():
        assert idle[replica] == pytest.approx(true_idle, rel=0.01), replica
    total = con.execute("SELECT sum(cost_micro) / 1e6 FROM replica_window").fetchone()
    assert total is not None
    assert total[0] == pytest.approx(sum(truth.replica_cost.values()), abs=0.01)
    assert invariant_violations(store, catalog) == []


def test_aborted_and_errored_requests_are_costed(
    store: Store, ingestor: Ingestor, catalog: Catalog
) -> None:
    start = T0 + timedelta(minutes=1)
    records = [
        UsageRecord(
            "abort",
            "t",
            "m",
            start,
            start + timedelta(seconds=20),
            status="client_abort",
            replica="r",
            first_token_at=start + timedelta(seconds=1),
            prompt_tokens=1000,
            completion_tokens=300,
            http_status=499,
        ),
        UsageRecord(
            "err",
            "t",
            "m",
            start + timedelta(seconds=25),
            start + timedelta(seconds=27),
            status="error",
            replica="r",
            prompt_tokens=5000,
            http_status=500,
        ),
        UsageRecord(
            "throttled",
            "t",
            "m",
            start,
            start,
            status="throttled",
            replica="r",
            prompt_tokens=5000,
            http_status=429,
        ),
    ]
    ingest(ingestor, records)
    Allocator(store, catalog, replicas={"r": ReplicaSettings(gpu="l4")}).run(
        T0, T0 + timedelta(hours=1)
    )
    windows = request_windows(store, catalog)
    cost: dict[str, int] = {}
    for rid, micro in zip(
        windows.column("request_id").to_pylist(),
        windows.column("cost_micro").to_pylist(),
        strict=True,
    ):
        cost[rid] = cost.get(rid, 0) + micro
    assert cost["abort"] > 0 and cost["err"] > 0
    assert "throttled" not in cost
    # the window's busy cost (20 s + 2 s busy of 60 s) is fully allocated to the two requests
    l4_per_s = catalog.usd_per_hour("l4") / 3600 * 1e6
    assert cost["abort"] + cost["err"] == pytest.approx(22 * l4_per_s, abs=2)


def test_mig_slice_priced_by_fraction_and_energy_when_priced(
    store: Store, catalog: Catalog
) -> None:
    ing = Ingestor(store, lambda: T0.timestamp())
    samples = []
    for i in range(0, 3600, 15):
        ts = T0 + timedelta(seconds=i)
        samples.append(
            {
                "ts": ts.isoformat(),
                "node": "n1",
                "gpu_uuid": "GPU-1",
                "mig_uuid": "MIG-1",
                "gpu_model": "NVIDIA H100 80GB HBM3",
                "mig_profile": "3g.40gb",
                "replica": "mig-rep",
                "energy_j": 400.0 * i,
                "power_w": 400.0,
            }
        )
    import orjson

    assert ing.gpu_samples(orjson.dumps(samples)).accepted == len(samples)
    allocator = Allocator(store, catalog, window_s=60, price_energy=True)
    result = allocator.run(T0, T0 + timedelta(hours=1))
    row = store.connection.execute(
        "SELECT sum(capacity_usd), sum(energy_j), sum(energy_usd), max(gpu_equiv), "
        "sum(cost_micro) FROM replica_window WHERE replica = 'mig-rep'"
    ).fetchone()
    assert row is not None
    capacity, energy_j, energy_usd, gpu_equiv, cost_micro = row
    assert gpu_equiv == pytest.approx(0.5)
    assert capacity == pytest.approx(catalog.usd_per_hour("h100-sxm") * 0.5, rel=1e-6)
    # 400 W for the hour (minus the first sample interval), half charged to the slice
    assert energy_j == pytest.approx(400 * (3600 - 15) * 0.5, rel=1e-6)
    assert energy_usd == pytest.approx(energy_j / 3.6e6 * catalog.energy_usd_per_kwh, rel=1e-6)
    assert cost_micro == result.cost_micro == result.idle_micro


def test_rerun_is_idempotent_and_picks_up_late_records(
    store: Store, ingestor: Ingestor, catalog: Catalog
) -> None:
    replicas = {"r": ReplicaSettings(gpu="h100-sxm")}
    start = T0 + timedelta(minutes=5)
    ingest(
        ingestor,
        [
            UsageRecord(
                "a",
                "t1",
                "m",
                start,
                start + timedelta(seconds=30),
                replica="r",
                prompt_tokens=100,
                completion_tokens=100,
            )
        ],
    )
    allocator = Allocator(store, catalog, replicas=replicas)
    first = allocator.run(T0, T0 + timedelta(hours=1))
    again = allocator.run(T0, T0 + timedelta(hours=1))
    assert (first.cost_micro, first.idle_micro) == (again.cost_micro, again.idle_micro)
    con = store.connection
    assert request_windows(store, catalog).num_rows == 1
    ingest(
        ingestor,
        [
            UsageRecord(
                "late",
                "t2",
                "m",
                start,
                start + timedelta(seconds=30),
                replica="r",
                prompt_tokens=100,
                completion_tokens=100,
            )
        ],
    )
    allocator.run(T0, T0 + timedelta(hours=1))
    costs = dict(
        con.execute("SELECT tenant, sum(cost_micro) FROM cost_hourly GROUP BY ALL").fetchall()
    )
    assert abs(costs["t1"] - costs["t2"]) <= 1  # cumulative rounding: one micro-dollar apart
    assert invariant_violations(store, catalog) == []


def test_thin_data_uses_documented_defaults(
    store: Store, ingestor: Ingestor, catalog: Catalog
) -> None:
    from infermeter.metering.calibration import DEFAULT_DECODE_S, DEFAULT_PREFILL_S

    start = T0 + timedelta(minutes=5)
    ingest(
        ingestor,
        [
            UsageRecord(
                "x",
                "t",
                "m",
                start,
                start + timedelta(seconds=3),
                replica="r",
                prompt_tokens=10,
                completion_tokens=10,
            )
        ],
    )
    result = Allocator(store, catalog, replicas={"r": ReplicaSettings(gpu="l4")}).run(
        T0, T0 + timedelta(hours=1)
    )
    [calib] = result.calibrations
    assert (calib.source, calib.prefill_s_per_token, calib.decode_s_per_token) == (
        "default",
        DEFAULT_PREFILL_S,
        DEFAULT_DECODE_S,
    )


def test_unknown_replica_is_reported_unpriced(
    store: Store, ingestor: Ingestor, catalog: Catalog
) -> None:
    start = T0 + timedelta(minutes=5)
    ingest(
        ingestor,
        [
            UsageRecord(
                "x",
                "t",
                "m",
                start,
                start + timedelta(seconds=3),
                replica="ghost",
                prompt_tokens=10,
                completion_tokens=10,
            )
        ],
    )
    result = Allocator(store, catalog).run(T0, T0 + timedelta(hours=1))
    assert result.unpriced_requests == 1


def test_window_must_divide_an_hour(store: Store, catalog: Catalog) -> None:
    from infermeter.metering.errors import QueryError

    with pytest.raises(QueryError):
        Allocator(store, catalog, window_s=7)


def test_managed_upstream_priced_at_catalog_tokens(
    store: Store, ingestor: Ingestor, catalog: Catalog
) -> None:
    start = T0 + timedelta(minutes=5)
    ingest(
        ingestor,
        [
            UsageRecord(
                "m1",
                "t",
                "gpt-4o-mini",
                start,
                start + timedelta(seconds=2),
                upstream="managed",
                prompt_tokens=1_000_000,
                completion_tokens=500_000,
            )
        ],
    )
    Allocator(store, catalog).run(T0, T0 + timedelta(hours=1))
    got = request_windows(store, catalog).column("cost_micro").to_pylist()
    price = catalog.managed["openai/gpt-4o-mini"]
    assert got == [round(1e6 * price.input_per_mtok + 0.5e6 * price.output_per_mtok)]


def test_lookup_uses_each_windows_own_run_calibration(
    store: Store, ingestor: Ingestor, catalog: Catalog
) -> None:
    per_s = price_per_s(catalog)
    truth = ground_truth_workload(per_s, hours=3, seed=11)
    edge = T0 + timedelta(hours=1)
    across = UsageRecord(
        "across",
        "t",
        truth.records[0].model,
        edge - timedelta(seconds=90),
        edge + timedelta(seconds=90),
        first_token_at=edge - timedelta(seconds=80),
        replica="r-h100",
        prompt_tokens=4000,
        completion_tokens=3000,
    )
    ingest(ingestor, [*truth.records, across])
    replicas = priced_replicas()
    allocator = Allocator(store, catalog, window_s=60, replicas=replicas)
    first = allocator.run(T0, T0 + timedelta(hours=1))
    second = allocator.run(T0 + timedelta(hours=1), T0 + timedelta(hours=3))
    fits = [r.calibrations[0] for r in (first, second)]
    assert [c.source for c in fits] == ["fit", "fit"], fits
    assert fits[0].prefill_s_per_token != fits[1].prefill_s_per_token  # two calibrations
    # every request's recomputed windows, across both runs, sum to what each run allocated
    assert invariant_violations(store, catalog) == []
    windows = request_windows(store, catalog)
    seen: dict[str, set[int]] = {}
    for rid, start in zip(
        windows.column("request_id").to_pylist(),
        windows.column("window_start").to_pylist(),
        strict=True,
    ):
        seen.setdefault(rid, set()).add(start.hour)
    assert set().union(*seen.values()) == {T0.hour, T0.hour + 1, T0.hour + 2}
    assert seen["across"] == {T0.hour, T0.hour + 1}  # its windows come from both runs


def test_configured_replica_holds_capacity_from_its_start(
    store: Store, ingestor: Ingestor, catalog: Catalog
) -> None:
    def first_window(name: str) -> object:
        row = store.connection.execute(
            "SELECT min(window_start) FROM replica_window WHERE replica = ?", [name]
        ).fetchone()
        return row[0] if row else None

    start = T0 + timedelta(minutes=20)
    ingest(
        ingestor,
        [
            UsageRecord(
                "early",
                "t",
                "m",
                start,
                start + timedelta(seconds=30),
                replica="served",
                prompt_tokens=100,
                completion_tokens=10,
            )
        ],
    )
    replicas = {
        "backfill": ReplicaSettings(gpu="l4"),  # never seen by a service: the whole range
        "pinned": ReplicaSettings(gpu="l4", since=T0 + timedelta(minutes=45, seconds=30)),
        "served": ReplicaSettings(gpu="l4"),  # seen at +40 min, first record at +20 min
        "new": ReplicaSettings(gpu="l4"),  # seen at +40 min, no record
    }
    seen_at = (T0 + timedelta(minutes=40)).timestamp()
    registrar = Allocator(
        store,
        catalog,
        replicas={k: v for k, v in replicas.items() if k in ("served", "new")},
        now=lambda: seen_at,
    )
    registrar.register_replicas()
    registrar.register_replicas()  # idempotent: the first time is kept
    later = (T0 + timedelta(hours=5)).timestamp()
    Allocator(
        store, catalog, replicas={"new": replicas["new"]}, now=lambda: later
    ).register_replicas()
    result = Allocator(store, catalog, replicas=replicas).run(T0, T0 + timedelta(hours=1))
    naive = T0.replace(tzinfo=None)
    assert first_window("backfill") == naive
    assert first_window("pinned") == naive + timedelta(minutes=45)  # the window holding since
    assert first_window("served") == naive + timedelta(minutes=20)
    assert first_window("new") == naive + timedelta(minutes=40)
    assert result.unpriced_requests == 0
    seen = store.connection.execute(
        "SELECT replica, count(*) FROM replica_config_seen GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert seen == [("new", 1), ("served", 1)]
