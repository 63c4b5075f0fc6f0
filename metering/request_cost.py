"""One request's cost and its breakdown per window, recomputed on lookup.

Allocation stores totals (per replica-window, per hour and dimension), not one row per
request: that row was the largest write of a run. A lookup recomputes the request's windows
with the same arithmetic (:func:`metering.window_costs.compute`) from what the run read: the
usage records of every request active on the replica in the window, the window's cost from
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

from metering import calibration, window_costs
from metering.allocation import epoch_us, managed_prices
from metering.catalog import Catalog
from metering.sql_files import bind, query

NOT_COSTED = ("throttled", "cache_hit")


class RequestCosts:
    """Recomputes request costs over one store's cursor."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

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
        out = []
        for i in range(windows.num_rows):
            window = windows.slice(i, 1)
            found = self._window(cur, record["request_id"], window)
            if found is not None:
                out.append(found)
        return out

    def _window(
        self, cur: duckdb.DuckDBPyConnection, request_id: str, window: pa.Table
    ) -> dict[str, Any] | None:
        start: datetime = window.column("window_start")[0].as_py()
        window_us = round(window.column("provisioned_s")[0].as_py() * 1e6)
        w = epoch_us(start) // window_us
        params = {
            "replica": window.column("replica")[0].as_py(),
            "w_since": w,
            "w_until": w + 1,
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
            return None
        weights = {
            row[0]: calibration.Calibration(row[0], row[1], row[2], 0, row[3])
            for row in cur.execute(query("reports", "window_calibration"), {"at": start}).fetchall()
        }
        cost_micro = window.column("cost_micro")[0].as_py()
        if cost_micro <= 0:
            return None  # unpriced window: the run counted the request as unpriced
        columns = ["replica", "pool", "model", *window_costs.CAPACITY_COLUMNS]
        capacity = window.select(columns).append_column("w", pa.array([w], pa.int64()))
        capacity = capacity.append_column("priced", pa.array([cost_micro > 0]))
        costs = window_costs.compute(
            requests,
            profiles,
            capacity,
            window_us=window_us,
            w_since=w,
            w_until=w + 1,
            choose=lambda model, _sums: weights.get(model) or calibration.default(model),
        )
        rows = costs.rows
        at = np.flatnonzero(rows.column("row").to_numpy() == mine)
        allocated = int(pc.sum(rows.column("cost_micro")).as_py() or 0)
        stale = allocated != window.column("allocated_micro")[0].as_py()
        if len(at) == 0:
            return None
        k = int(at[0])
        return {
            "window_start": start,
            "replica": params["replica"],
            "cost_micro": int(rows.column("cost_micro")[k].as_py()),
            "work": rows.column("work")[k].as_py(),
            "prefill_tokens": rows.column("prefill_tokens")[k].as_py(),
            "decode_tokens": rows.column("decode_tokens")[k].as_py(),
            "gpu_s": rows.column("gpu_s")[k].as_py(),
            "energy_j": rows.column("energy_j")[k].as_py(),
            "stale": stale,
        }

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
