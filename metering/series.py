"""Usage-side series for the dashboards: latency percentiles, throughput and GPU samples per
time bucket, read straight from the usage records and GPU samples (``sql/reports.sql``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from infermeter.metering.errors import QueryError
from infermeter.metering.sql_files import bind, query
from infermeter.metering.store import Store
from infermeter.metering.timeparse import check_range, iso, naive_utc

GRANULARITIES = ("minute", "hour", "day", "total")
LATENCY_GROUPS = {"": "''", "pool": "pool", "replica": "replica"}


def _bucket(column: str, granularity: str, *, allow_minute: bool = False) -> str:
    if granularity == "total":
        return "CAST($since AS TIMESTAMP)"
    if granularity == "minute" and not allow_minute:
        raise QueryError("granularity", "must be hour, day or total for cost reports")
    if granularity not in GRANULARITIES:
        raise QueryError("granularity", f"must be one of {list(GRANULARITIES)}")
    return f"CAST(date_trunc('{granularity}', {column}) AS TIMESTAMP)"


class SeriesReports:
    """Store access shared by every report, and the usage-side series."""

    store: Store
    now: Callable[[], float]

    def _rows(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        cur = self.store.cursor()
        try:
            return cur.execute(sql, bind(sql, params)).fetchall()
        finally:
            cur.close()

    def _range(self, since: datetime, until: datetime) -> tuple[datetime, datetime]:
        """Validate a range (``until`` after ``since``, else RangeError) and clamp it to the
        injected clock's now: no report reaches past now (a range wholly in the future is
        empty)."""
        since, until = naive_utc(since), naive_utc(until)
        check_range(since, until)
        until = min(until, self._now())
        return min(since, until), until

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.now(), tz=UTC).replace(tzinfo=None)

    def latency(
        self,
        since: datetime,
        until: datetime,
        granularity: str = "hour",
        model: str = "",
        tenant: str = "",
        by: str = "",
        pool: str = "",
        replica: str = "",
    ) -> dict[str, Any]:
        """Latency percentiles and tokens/s per bucket from the usage records.

        ``by`` = ``pool`` or ``replica`` adds that key to every row (one series per value);
        ``pool`` / ``replica`` filter.
        """
        since, until = self._range(since, until)
        if by not in LATENCY_GROUPS:
            raise QueryError("by", "must be pool or replica (or empty for the whole fleet)")
        sql = (
            query("reports", "latency")
            .replace("__BUCKET_U__", _bucket("finished_at", granularity, allow_minute=True))
            .replace("__GROUP__", LATENCY_GROUPS[by])
        )
        params = {
            "since": since,
            "until": until,
            "model": model,
            "tenant": tenant,
            "pool": pool,
            "replica": replica,
        }
        seconds = {"minute": 60, "hour": 3600, "day": 86400}.get(
            granularity, (until - since).total_seconds()
        )
        rows = []
        for r in self._rows(sql, params):
            bucket, grp, n, errors, aborts, ttft, e2e, itl, queue, tps, completion, prompt = r
            row: dict[str, Any] = {"bucket": iso(bucket)}
            if by:
                row[by] = grp
            rows.append(
                row
                | {
                    "requests": n,
                    "errors": errors,
                    "client_aborts": aborts,
                    "ttft_s": _quantiles(ttft, ("p50", "p95", "p99")),
                    "e2e_s": _quantiles(e2e, ("p50", "p95", "p99")),
                    "itl_s": _quantiles(itl, ("p50", "p95")),
                    "queue_s": _quantiles(queue, ("p50", "p95")),
                    "tokens_per_s_per_request_p50": tps,
                    "output_tokens_per_s": round((completion or 0) / seconds, 3),
                    "prompt_tokens_per_s": round((prompt or 0) / seconds, 3),
                }
            )
        return {"granularity": granularity, "by": by, "rows": rows}

    def gpu(
        self, since: datetime, until: datetime, granularity: str = "minute", replica: str = ""
    ) -> dict[str, Any]:
        """GPU samples aggregated per bucket and device."""
        since, until = self._range(since, until)
        sql = query("reports", "gpu_series").replace(
            "__BUCKET_S__", _bucket("ts", granularity, allow_minute=True)
        )
        cols = [
            "bucket",
            "replica",
            "gpu_uuid",
            "mig_uuid",
            "gpu_model",
            "mig_profile",
            "util_pct",
            "mem_used_bytes",
            "mem_total_bytes",
            "power_w",
            "energy_j",
            "temp_c",
            "samples",
        ]
        rows = []
        for r in self._rows(sql, {"since": since, "until": until, "replica": replica}):
            row = dict(zip(cols, r, strict=True))
            row["bucket"] = iso(row["bucket"])
            rows.append(row)
        return {"granularity": granularity, "rows": rows}


def _quantiles(values: list[float] | None, names: tuple[str, ...]) -> dict[str, float | None]:
    if not values:
        return {n: None for n in names}
    return {n: (round(v, 6) if v is not None else None) for n, v in zip(names, values, strict=True)}
