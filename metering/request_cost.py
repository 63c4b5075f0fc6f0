"""One request's cost and its breakdown per window, recomputed on lookup.

Allocation stores totals (per replica-window, per hour and dimension), not one row per
request: that row was the largest write of a run. A lookup recomputes the request's windows
with the same arithmetic (:func:`infermeter.metering.window_costs.compute`) from what the run read:
the usage records of every request active on the replica in the window, the window's cost from
``replica_window`` and the calibration the run recorded for that window. The recomputation
equals what the run allocated as long as no usage record of that window arrived after the
run; when one did, the window is flagged ``stale`` (the next allocation run catches up).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infermeter.kernel.price_catalog import Catalog
from infermeter.metering import calibration, window_costs
from infermeter.metering.allocation import epoch_us, managed_prices
from infermeter.metering.sql_files import bind, query

NOT_COSTED = ("throttled", "cache_hit")


class RequestCosts:
    """Recomputes request costs over one store's cursor."""

    def __init__(self, catalog: Catalog, context: window_costs.ContextOf) -> None:
        self.catalog = catalog
        self.context = context

    def windows(
        self, cur: duckdb.DuckDBPyConnection, record: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """The request's cost per allocated window (empty before allocation covered it)."""
        if record["status"] in NOT_COSTED:
            return []
        if record["upstream"] == "managed":
            return self._managed(cur, record)
        if not record["replica"]:
            return []
        started: datetime = record["started_at"]
        finished: datetime = record["finished_at"]
        x0 = min(started + timedelta(seconds=record["queue_s"] or 0), finished)
        sql = query("reports", "request_replica_windows")
        params = {"replica": record["replica"], "x0": x0, "f": finished}
        windows = cur.execute(sql, bind(sql, params)).fetch_arrow_table()
        if windows.num_rows == 0:
            return []
        starts = windows.column("window_start").to_pylist()
        sql = query("reports", "span_calibrations")
        runs = cur.execute(sql, {"first": starts[0], "last": starts[-1]}).fetchall()
        weights = [_weights_at(runs, at) for at in starts]
        out: list[dict[str, Any]] = []
        for lo, hi in _spans(windows, weights):
            span = windows.slice(lo, hi - lo)
            out.extend(self._span(cur, record["request_id"], span, weights[lo]))
        return out

    def _span(
        self,
        cur: duckdb.DuckDBPyConnection,
        request_id: str,
        windows: pa.Table,
        weights: dict[str, calibration.Calibration],
    ) -> list[dict[str, Any]]:
        """Recompute consecutive windows of one size and one calibration in one go."""
        starts: list[datetime] = windows.column("window_start").to_pylist()
        window_us = round(windows.column("provisioned_s")[0].as_py() * 1e6)
        w = np.array([epoch_us(t) // window_us for t in starts], dtype=np.int64)
        replica = windows.column("replica")[0].as_py()
        params = {
            "replica": replica,
            "w_since": int(w[0]),
            "w_until": int(w[-1]) + 1,
            "window_us": window_us,
            "with_id": True,
        }
        sql = query("allocate", "profiles")
        cur.execute(sql, bind(sql, params))
        sql = query("allocate", "requests")
        requests = cur.execute(sql, bind(sql, params)).fetch_arrow_table()
        profiles = cur.execute(query("allocate", "profile_rows")).fetch_arrow_table()
        mine = pc.index(requests.column("request_id"), request_id).as_py()
        if mine < 0:
            return []
        cost = windows.column("cost_micro").to_numpy()
        columns = ["replica", "pool", "model", *window_costs.CAPACITY_COLUMNS]
        capacity = windows.select(columns).append_column("w", pa.array(w))
        capacity = capacity.append_column("priced", pa.array(cost > 0))  # 0: unpriced
        rows = window_costs.compute(
            requests,
            profiles,
            capacity,
            window_us=window_us,
            w_since=params["w_since"],
            w_until=params["w_until"],
            choose=lambda model, _sums: weights.get(model) or calibration.default(model),
            context=self.context,
        ).rows
        row_w = rows.column("w").to_numpy()
        row_cost = rows.column("cost_micro").to_numpy()
        out = []
        for k in np.flatnonzero(rows.column("row").to_numpy() == mine):
            i = int(np.searchsorted(w, row_w[k]))
            allocated = int(row_cost[row_w == row_w[k]].sum())
            out.append(
                {
                    "window_start": starts[i],
                    "replica": replica,
                    "cost_micro": int(row_cost[k]),
                    "work": rows.column("work")[k].as_py(),
                    "prefill_tokens": rows.column("prefill_tokens")[k].as_py(),
                    "decode_tokens": rows.column("decode_tokens")[k].as_py(),
                    "gpu_s": rows.column("gpu_s")[k].as_py(),
                    "energy_j": rows.column("energy_j")[k].as_py(),
                    "stale": allocated != windows.column("allocated_micro")[i].as_py(),
                }
            )
        return out

    def _managed(
        self, cur: duckdb.DuckDBPyConnection, record: dict[str, Any]
    ) -> list[dict[str, Any]]:
        price = managed_prices(self.catalog).get(record["model"])
        finished: datetime = record["finished_at"]
        covered = cur.execute(query("reports", "allocated_at"), {"at": finished}).fetchone()
        if price is None or not covered or not covered[0]:
            return []
        prompt, completion = record["prompt_tokens"], record["completion_tokens"]
        return [
            {
                "window_start": finished,
                "replica": "",
                "cost_micro": math.floor(prompt * price[0] + completion * price[1] + 0.5),
                "work": 0.0,
                "prefill_tokens": float(prompt - record["cached_prompt_tokens"]),
                "decode_tokens": float(completion),
                "gpu_s": 0.0,
                "energy_j": 0.0,
                "stale": False,
            }
        ]


def _weights_at(runs: list[tuple[Any, ...]], at: datetime) -> dict[str, calibration.Calibration]:
    """Per model, the calibration of the latest run that covered the window starting at
    ``at`` (``runs``: statement ``span_calibrations``, oldest first)."""
    out = {}
    for model, start, end, a, b, source in runs:
        if start <= at < end:
            out[model] = calibration.Calibration(model, a, b, 0, source)
    return out


def _spans(
    windows: pa.Table, weights: list[dict[str, calibration.Calibration]]
) -> list[tuple[int, int]]:
    """Runs of consecutive rows with the same window size and calibration."""
    size = windows.column("provisioned_s").to_pylist()
    out, lo = [], 0
    for i in range(1, len(size) + 1):
        if i == len(size) or size[i] != size[lo] or weights[i] != weights[lo]:
            out.append((lo, i))
            lo = i
    return out
