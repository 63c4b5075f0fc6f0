"""Cost allocation: the replica's cost per window, split over the requests active in it.

The arithmetic is vectorised numpy (:mod:`infermeter.metering.window_costs`,
:mod:`infermeter.metering.window_split`) between two SQL steps (``sql/allocate.sql``): this module
registers the inputs (price catalog, configured replicas, managed prices), runs the steps in
order, chooses the calibration (:mod:`infermeter.metering.calibration`) and writes the results for
one range of windows in one transaction, replacing whatever an earlier run wrote for that range.
Re-running a range is therefore idempotent, and late records are picked up by re-running it.

Invariant (tested with hypothesis): in every replica-window, the requests' costs plus the idle
cost equal the replica's cost exactly, in integer micro-dollars; no request's cost is negative.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from infermeter.kernel.price_catalog import Catalog
from infermeter.metering import calibration, window_costs
from infermeter.metering.context_weights import ContextWeightBook, ContextWeights
from infermeter.metering.errors import QueryError, RangeError, StorageError
from infermeter.metering.settings import ReplicaSettings
from infermeter.metering.sql_files import bind, query
from infermeter.metering.store import Store

HOUR_US = 3_600_000_000
SAMPLE_LOOKBACK_US = 600_000_000


@dataclass(slots=True)
class AllocationResult:
    """Summary of one allocation run."""

    range_start: datetime
    range_end: datetime
    replica_windows: int = 0
    request_windows: int = 0
    unpriced_requests: int = 0
    cost_micro: int = 0
    idle_micro: int = 0
    duration_s: float = 0.0
    calibrations: list[calibration.Calibration] = field(default_factory=list)
    context_weights: dict[str, ContextWeights] = field(default_factory=dict)
    clamped: bool = False
    open_window_start: datetime | None = None

    @property
    def provisional(self) -> bool:
        """The range ends inside the hour that contains now: that hour's rollups still fill."""
        if self.open_window_start is None or self.range_end <= self.range_start:
            return False
        return self.range_end > _floor_hour(self.open_window_start)

    def to_json(self) -> dict[str, object]:
        return {
            "range_start": self.range_start.isoformat() + "Z",
            "range_end": self.range_end.isoformat() + "Z",
            "clamped": self.clamped,
            "open_window_start": (
                self.open_window_start.isoformat() + "Z" if self.open_window_start else None
            ),
            "provisional": self.provisional,
            "replica_windows": self.replica_windows,
            "request_windows": self.request_windows,
            "unpriced_requests": self.unpriced_requests,
            "cost_usd": self.cost_micro / 1e6,
            "idle_usd": self.idle_micro / 1e6,
            "duration_s": round(self.duration_s, 3),
            "calibrations": [c.to_json() for c in self.calibrations],
            "context_weights": {m: w.to_json() for m, w in sorted(self.context_weights.items())},
        }


def epoch_us(value: datetime) -> int:
    """Microseconds since the epoch of a naive-UTC or aware datetime."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return int(aware.timestamp()) * 1_000_000 + aware.microsecond


def _floor_hour(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def from_us(value: int) -> datetime:
    """Naive UTC datetime from epoch microseconds."""
    return datetime.fromtimestamp(value / 1e6, tz=UTC).replace(tzinfo=None)


_FUTURE_ROWS = (
    ("replica_window", "window_start"),
    ("cost_hourly", "hour"),
    ("cost_detail", "hour"),
    ("replica_hourly", "hour"),
    ("cost_rollup", "bucket"),
)


def _purge_future(cur: duckdb.DuckDBPyConnection, from_us: int) -> None:
    """Delete results for time at or after ``from_us`` (the open window's start): time that
    had not happened when an earlier release allocated it. The hour and day that contain
    ``from_us`` are rebuilt by the run that calls this (it reaches the open window)."""
    for table, column in _FUTURE_ROWS:
        cur.execute(f"DELETE FROM {table} WHERE {column} >= make_timestamp($t)", {"t": from_us})


def _price_table(catalog: Catalog) -> pa.Table:
    rows = catalog.price_rows()
    names = ["gpu", "lookup", "mig_profile", "pricing", "fraction", "usd_per_hour"]
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})


def _replica_table(replicas: Mapping[str, ReplicaSettings]) -> pa.Table:
    items = sorted(replicas.items())
    return pa.table(
        {
            "replica": pa.array([n for n, _ in items], pa.string()),
            "gpu": pa.array([r.gpu for _, r in items], pa.string()),
            "mig_profile": pa.array([r.mig_profile for _, r in items], pa.string()),
            "count": pa.array([r.count for _, r in items], pa.int64()),
            "pool": pa.array([r.pool for _, r in items], pa.string()),
            "pricing": pa.array([r.pricing for _, r in items], pa.string()),
            "model": pa.array([r.model for _, r in items], pa.string()),
            "since": pa.array(
                [from_us(epoch_us(r.since)) if r.since else None for _, r in items],
                pa.timestamp("us"),
            ),
        }
    )


def managed_prices(catalog: Catalog) -> dict[str, tuple[float, float]]:
    """$ per million input / output tokens by model name, full (``openai/gpt-4o-mini``) or
    without its provider prefix (``gpt-4o-mini``; the first provider in name order wins)."""
    rows: dict[str, tuple[float, float]] = {}
    for name, price in sorted(catalog.managed.items()):
        rows.setdefault(name.split("/", 1)[-1], (price.input_per_mtok, price.output_per_mtok))
    for name, price in catalog.managed.items():
        rows[name] = (price.input_per_mtok, price.output_per_mtok)
    return rows


def _managed_table(catalog: Catalog) -> pa.Table:
    rows = managed_prices(catalog)
    return pa.table(
        {
            "model": pa.array(list(rows), pa.string()),
            "input_per_mtok": pa.array([v[0] for v in rows.values()], pa.float64()),
            "output_per_mtok": pa.array([v[1] for v in rows.values()], pa.float64()),
        }
    )


class Allocator:
    """Runs allocation over ranges of windows of one store."""

    def __init__(
        self,
        store: Store,
        catalog: Catalog,
        *,
        window_s: int = 60,
        replicas: Mapping[str, ReplicaSettings] | None = None,
        price_energy: bool = False,
        context: window_costs.ContextOf | None = None,
        max_range_days: int = 400,
        now: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if 3600 % window_s:
            raise QueryError("window_s", "must divide 3600 (windows align with hours)")
        self.store = store
        self.catalog = catalog
        self.window_us = window_s * 1_000_000
        self.replicas = dict(replicas or {})
        self.price_energy = price_energy
        self.context = context or ContextWeightBook()
        self.max_range_days = max_range_days
        self.now = now
        self.clock = clock

    def run(self, since: datetime, until: datetime) -> AllocationResult:
        """Allocate every window in ``[since, until)`` (since aligned down to the hour, until
        down to the window) and replace earlier results for that range.

        Only closed windows are allocated: ``until`` is clamped to the start of the window
        that contains the injected clock's now (the open window), so no time after now is
        billed; the open window is allocated by the first run after it closes. Rows that an
        earlier release wrote for windows at or after now are removed by a run that reaches
        the open window."""
        w_now = round(self.now() * 1_000_000) // self.window_us
        w_since = min((epoch_us(since) // HOUR_US) * HOUR_US // self.window_us, w_now)
        w_until = epoch_us(until) // self.window_us
        clamped = w_until > w_now
        w_until = min(w_until, w_now)
        if w_until * self.window_us % HOUR_US and self._allocated_beyond(w_until):
            # re-running an old range: cover whole hours so hourly rollups stay complete
            # (never past the open window)
            hour_end = -(-w_until * self.window_us // HOUR_US) * HOUR_US // self.window_us
            w_until = min(hour_end, w_now)
        result = AllocationResult(
            from_us(w_since * self.window_us),
            from_us(max(w_until, w_since) * self.window_us),
            clamped=clamped,
            open_window_start=from_us(w_now * self.window_us),
        )
        if w_until <= w_since:
            return result
        if (w_until - w_since) * self.window_us > self.max_range_days * 86_400_000_000:
            # every window of a configured replica is a row: an unbounded range is unbounded
            # memory (since=100000w was 24 GB); backfills run in parts
            raise RangeError(
                "since",
                f"the range {result.range_start.isoformat()}Z .. "
                f"{result.range_end.isoformat()}Z is longer than max_allocate_days "
                f"({self.max_range_days} days): allocate it in parts",
            )
        started = self.clock()
        params: dict[str, object] = {
            "w_since": w_since,
            "w_until": w_until,
            "window_us": self.window_us,
            "lookback_us": SAMPLE_LOOKBACK_US,
            "overhead": self.catalog.overhead_multiplier,
            "usd_per_kwh": self.catalog.energy_usd_per_kwh,
            "price_energy": self.price_energy,
            "replica": "",
            "with_id": False,
        }
        future = w_until == w_now and self._allocated_beyond(w_now)
        purge_from = w_now * self.window_us if future else None
        cur = self.store.cursor()
        try:
            cur.register("price_catalog", _price_table(self.catalog))
            cur.register("replica_config", _replica_table(self.replicas))
            cur.register("managed_prices", _managed_table(self.catalog))
            for step in ("capacity", "profiles"):
                self._exec(cur, step, params)
            sql = query("allocate", "requests")
            requests = cur.execute(sql, bind(sql, params)).fetch_arrow_table()
            profiles = cur.execute(query("allocate", "profile_rows")).fetch_arrow_table()
            capacity = cur.execute(query("allocate", "capacity_rows")).fetch_arrow_table()
            costs = window_costs.compute(
                requests,
                profiles,
                capacity,
                window_us=self.window_us,
                w_since=w_since,
                w_until=w_until,
                choose=self._chooser(cur),
                context=self.context,
            )
            del requests, capacity
            result.calibrations = costs.calibrations
            result.context_weights = costs.context
            result.unpriced_requests = costs.unpriced_requests
            result.request_windows = costs.rows.num_rows
            cur.register("alloc_rows", costs.rows)
            cur.register("alloc_names", costs.names)
            cur.register("alloc_replicas", costs.replicas)
            self._exec(cur, "managed", params)
            self._write(cur, params, result, started, purge_from)
        except duckdb.Error as exc:
            raise StorageError(f"allocation failed: {exc}") from exc
        finally:
            cur.close()
        result.duration_s = self.clock() - started
        return result

    @staticmethod
    def _chooser(cur: duckdb.DuckDBPyConnection) -> window_costs.Chooser:
        previous = {
            row[0]: calibration.Calibration(row[0], row[1], row[2], row[3], row[4], row[5], row[6])
            for row in cur.execute(query("reports", "latest_fit_calibration")).fetchall()
        }

        def choose(model: str, sums: calibration.Sums | None) -> calibration.Calibration:
            return calibration.choose(model, sums, previous.get(model))

        return choose

    def register_replicas(self) -> None:
        """Record now as when this service first ran with each configured replica (kept
        across restarts): configured replicas hold capacity from then on, or from their
        first usage record if earlier (docs/metering.md, Allocation 1)."""
        now = datetime.fromtimestamp(self.now(), tz=UTC).replace(tzinfo=None)
        cur = self.store.cursor()
        try:
            cur.register("replica_config", _replica_table(self.replicas))
            cur.execute(query("allocate", "register_replicas"), {"now": now})
        except duckdb.Error as exc:
            raise StorageError(f"registering replicas failed: {exc}") from exc
        finally:
            cur.close()

    def _allocated_beyond(self, w_until: int) -> bool:
        cur = self.store.cursor()
        try:
            row = cur.execute(
                "SELECT count(*) FROM replica_window WHERE window_start >= make_timestamp($t)",
                {"t": w_until * self.window_us},
            ).fetchone()
        finally:
            cur.close()
        return bool(row and row[0])

    @staticmethod
    def _exec(cur: duckdb.DuckDBPyConnection, name: str, params: dict[str, object]) -> None:
        sql = query("allocate", name)
        cur.execute(sql, bind(sql, params))

    def _write(
        self,
        cur: duckdb.DuckDBPyConnection,
        params: dict[str, object],
        result: AllocationResult,
        started: float,
        purge_from: int | None = None,
    ) -> None:
        now = datetime.fromtimestamp(self.now(), tz=UTC).replace(tzinfo=None)
        result_range = (epoch_us(result.range_start), epoch_us(result.range_end))
        cur.execute("BEGIN TRANSACTION")
        try:
            if purge_from is not None:
                _purge_future(cur, purge_from)
            for step in (
                "clear_replica_windows",
                "insert_replica_windows",
                "clear_hourly",
                "hourly",
                "clear_detail",
                "insert_detail",
                "clear_replica_hourly",
                "insert_replica_hourly",
                "clear_rollup_hours",
                "insert_rollup_hours",
                "clear_rollup_days",
                "insert_rollup_days",
            ):
                self._exec(cur, step, params)
            totals = cur.execute(
                "SELECT count(*), coalesce(sum(cost_micro), 0), coalesce(sum(idle_micro), 0) "
                "FROM replica_window WHERE window_start >= make_timestamp($a) "
                "AND window_start < make_timestamp($b)",
                {"a": result_range[0], "b": result_range[1]},
            ).fetchone()
            result.replica_windows, result.cost_micro, result.idle_micro = (
                (int(totals[0]), int(totals[1]), int(totals[2])) if totals else (0, 0, 0)
            )
            for c in result.calibrations:
                cur.execute(
                    "INSERT INTO calibration VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        c.model,
                        now,
                        result.range_start,
                        result.range_end,
                        c.windows,
                        c.prefill_s_per_token,
                        c.decode_s_per_token,
                        c.r2,
                        c.rmse_s,
                        c.source,
                    ],
                )
            cur.execute(
                "INSERT INTO allocation_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    result.range_start,
                    result.range_end,
                    now,
                    self.clock() - started,
                    result.replica_windows,
                    result.request_windows,
                    result.unpriced_requests,
                    result.cost_micro,
                    result.idle_micro,
                ],
            )
            cur.execute("COMMIT")
        except duckdb.Error:
            cur.execute("ROLLBACK")
            raise
        for table in ("alloc_capacity", "alloc_managed", "alloc_profiles"):
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        for view in ("alloc_rows", "alloc_names", "alloc_replicas"):
            cur.unregister(view)
