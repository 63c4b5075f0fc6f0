"""Reports over the allocation results and the usage data: the Python API that the HTTP
endpoints and the CLI both call. Every method returns JSON-ready dicts; SQL is in
``sql/reports.sql`` (group-by columns and time buckets come from fixed whitelists)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from infermeter.kernel.price_catalog import Catalog
from infermeter.metering.context_weights import ContextWeightBook
from infermeter.metering.errors import QueryError
from infermeter.metering.rate_reports import RateReports
from infermeter.metering.request_cost import RequestCosts
from infermeter.metering.series import _bucket
from infermeter.metering.sql_files import query
from infermeter.metering.store import Store
from infermeter.metering.timeparse import iso, naive_utc
from infermeter.metering.window_costs import ContextOf

DIMENSIONS = {
    "tenant": "tenant",
    "model": "model",
    "feature": "feature",
    "api_key": "api_key_id",
    "api_key_id": "api_key_id",
    "key": "api_key_id",
    "replica": "replica",
    "pool": "pool",
}


def _grain(granularity: str, since: datetime, until: datetime) -> str:
    """Read the daily rollup when the buckets and the range are whole days."""
    whole_days = since == _floor_day(since) and until == _floor_day(until)
    return "day" if granularity in ("day", "total") and whole_days else "hour"


def _floor_day(value: datetime) -> datetime:
    return value.replace(hour=0, minute=0, second=0, microsecond=0)


def _floor_hour(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def _rollup_bucket(granularity: str, grain: str) -> str:
    if granularity == "total":
        return "CAST($since AS TIMESTAMP)"
    if granularity == grain:
        return "bucket"
    return f"CAST(date_trunc('{granularity}', bucket) AS TIMESTAMP)"


_BUCKET_SPAN = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


def _provisional(
    bucket: datetime | None, granularity: str, asked: datetime, final: datetime | None
) -> bool:
    """A row is provisional when its bucket (for ``total``: the range as asked) reaches past
    the final numbers: it is still filling, or not allocated yet."""
    if final is None or bucket is None:
        return True
    span = _BUCKET_SPAN.get(granularity)
    return (bucket + span if span else asked) > final


def _usd(micro: float | int | None) -> float:
    return round((micro or 0) / 1e6, 6)


class Reports(RateReports):
    """Read-side queries of one store."""

    def __init__(
        self,
        store: Store,
        catalog: Catalog,
        *,
        share_idle: bool = False,
        now: Callable[[], float] = time.time,
        window_s: int = 60,
        context: ContextOf | None = None,
    ) -> None:
        self.store = store
        self.context = context or ContextWeightBook()
        self.catalog = catalog
        self.share_idle = share_idle
        self.now = now
        self.window = timedelta(seconds=window_s)

    # -- cost ------------------------------------------------------------------------------
    def cost(
        self,
        by: str,
        since: datetime,
        until: datetime,
        granularity: str = "day",
        tenant: str = "",
        model: str = "",
    ) -> dict[str, Any]:
        """Cost per ``by`` key and bucket, with idle shared back when the policy says so.
        The range is clamped to now; rows whose bucket reaches past the final numbers
        (:meth:`provisional_since`) say ``"provisional": true``."""
        asked = naive_utc(until)
        since, until = self._range(since, until)
        since = _floor_hour(since)
        final = self.provisional_since()
        if by not in DIMENSIONS:
            raise QueryError("by", f"must be one of {sorted(DIMENSIONS)}")
        _bucket("hour", granularity)  # validates granularity
        params: dict[str, Any] = {"since": since, "until": until, "share_idle": self.share_idle}
        if tenant or model:
            detail = DIMENSIONS[by] in ("feature", "api_key_id")
            sql = (
                query("reports", "cost_by_detail" if detail else "cost_by")
                .replace("__DIM__", DIMENSIONS[by])
                .replace("__BUCKET__", _bucket("c.hour", granularity))
            )
            params.update(tenant=tenant, model=model)
            if detail:
                params["dim"] = "feature" if by == "feature" else "api_key"
        else:
            grain = _grain(granularity, since, until)
            sql = (
                query("reports", "cost_by_rollup")
                .replace("__BUCKET__", _rollup_bucket(granularity, grain))
                .replace("__KEY__", "replica" if by == "replica" else "key")
            )
            dim = {"api_key_id": "api_key", "replica": "pool"}.get(DIMENSIONS[by], DIMENSIONS[by])
            params.update(grain=grain, dim=dim)
        rows = []
        for (
            bucket,
            key,
            cost,
            idle_share,
            req,
            prompt,
            cached,
            completion,
            gpu_s,
            kwh,
        ) in self._rows(sql, params):
            total = (cost or 0) + (idle_share or 0)
            tokens = (prompt or 0) + (completion or 0)
            rows.append(
                {
                    "bucket": iso(bucket),
                    by: key,
                    "cost_usd": _usd(cost),
                    "idle_share_usd": _usd(idle_share),
                    "total_usd": _usd(total),
                    "requests": int(req or 0),
                    "prompt_tokens": int(prompt or 0),
                    "cached_prompt_tokens": int(cached or 0),
                    "completion_tokens": int(completion or 0),
                    "usd_per_mtok": round(total / tokens, 6) if tokens else None,
                    "gpu_seconds": round(gpu_s or 0.0, 3),
                    "kwh": round(kwh or 0.0, 6),
                    "provisional": _provisional(bucket, granularity, asked, final),
                }
            )
        idle = self._idle("replica", since, until, granularity, asked, final)
        return {
            "by": by,
            "granularity": granularity,
            "since": iso(since),
            "until": iso(until),
            "provisional": final is None or asked > final,
            "provisional_since": iso(final),
            "share_idle": self.share_idle,
            "rows": rows,
            "idle": idle["rows"],
            "totals": {
                "allocated_usd": round(sum(r["cost_usd"] for r in rows), 6),
                "idle_shared_usd": round(sum(r["idle_share_usd"] for r in rows), 6),
                "idle_usd": idle["totals"]["idle_usd"],
                "replica_cost_usd": idle["totals"]["cost_usd"],
            },
        }

    def idle(
        self, by: str, since: datetime, until: datetime, granularity: str = "day"
    ) -> dict[str, Any]:
        """Idle cost per replica or pool and bucket (capacity no request used), over the
        range clamped to now; rows past the final numbers are marked provisional."""
        asked = naive_utc(until)
        since, until = self._range(since, until)
        final = self.provisional_since()
        out = self._idle(by, _floor_hour(since), until, granularity, asked, final)
        out.update(
            since=iso(_floor_hour(since)),
            until=iso(until),
            provisional=final is None or asked > final,
            provisional_since=iso(final),
        )
        return out

    def _idle(
        self,
        by: str,
        since: datetime,
        until: datetime,
        granularity: str,
        asked: datetime,
        final: datetime | None,
    ) -> dict[str, Any]:
        if by not in ("replica", "pool"):
            raise QueryError("by", "must be replica or pool")
        sql = (
            query("reports", "idle_by_rollup")
            .replace("__IDLE_DIM__", by)
            .replace("__BUCKET_H__", _bucket("hour", granularity))
        )
        rows = []
        for bucket, key, cost, alloc, idle, busy_s, prov_s, gpu_s, kwh in self._rows(
            sql, {"since": since, "until": until}
        ):
            rows.append(
                {
                    "bucket": iso(bucket),
                    by: key,
                    "cost_usd": _usd(cost),
                    "allocated_usd": _usd(alloc),
                    "idle_usd": _usd(idle),
                    "utilization": round(busy_s / prov_s, 6) if prov_s else None,
                    "busy_s": round(busy_s or 0.0, 3),
                    "provisioned_s": round(prov_s or 0.0, 3),
                    "gpu_seconds": round(gpu_s or 0.0, 3),
                    "kwh": round(kwh or 0.0, 6),
                    "provisional": _provisional(bucket, granularity, asked, final),
                }
            )
        return {
            "by": by,
            "granularity": granularity,
            "rows": rows,
            "totals": {
                "cost_usd": round(sum(r["cost_usd"] for r in rows), 6),
                "idle_usd": round(sum(r["idle_usd"] for r in rows), 6),
            },
        }

    # -- one request -----------------------------------------------------------------------
    def request(self, request_id: str) -> dict[str, Any] | None:
        """One request's usage record and cost breakdown per window; None if unknown."""
        cur = self.store.cursor()
        try:
            result = cur.execute(query("reports", "request_record"), {"request_id": request_id})
            names = [d[0] for d in result.description or []]
            row = result.fetchone()
            if row is None:
                return None
            record = dict(zip(names, row, strict=True))
            found = RequestCosts(self.catalog, self.context).windows(cur, record)
        finally:
            cur.close()
        for key in ("started_at", "first_token_at", "finished_at", "received_at"):
            record[key] = iso(record[key])
        windows = [
            {
                "window_start": iso(w["window_start"]),
                "replica": w["replica"],
                "cost_usd": _usd(w["cost_micro"]),
                "work": w["work"],
                "prefill_tokens": w["prefill_tokens"],
                "decode_tokens": w["decode_tokens"],
                "gpu_seconds": w["gpu_s"],
                "energy_j": w["energy_j"],
                "stale": w["stale"],
            }
            for w in found
        ]
        return {
            "request_id": request_id,
            "record": record,
            "allocated": bool(windows),
            "cost_usd": _usd(sum(w["cost_micro"] for w in found)),
            "gpu_seconds": round(sum(w["gpu_seconds"] or 0 for w in windows), 6),
            "kwh": round(sum(w["energy_j"] or 0 for w in windows) / 3.6e6, 9),
            "stale": any(w["stale"] for w in found),
            "windows": windows,
        }

    # -- buy vs build ----------------------------------------------------------------------
    def buy_vs_build(self, since: datetime, until: datetime) -> dict[str, Any]:
        """Self-hosted cost beside what every managed API in the catalog would have charged."""
        asked = naive_utc(until)
        since, until = self._range(since, until)
        since = _floor_hour(since)
        final = self.provisional_since()
        rows = []
        grain = _grain("day", since, until)
        sql = query("reports", "buy_vs_build_rollup")
        for key, cost, idle_share, prompt, completion, req in self._rows(
            sql, {"since": since, "until": until, "grain": grain}
        ):
            model, _, tenant = key.partition("\x1f")
            managed = {
                name: round((prompt * p.input_per_mtok + completion * p.output_per_mtok) / 1e6, 6)
                for name, p in sorted(self.catalog.managed.items())
            }
            rows.append(
                {
                    "model": model,
                    "tenant": tenant,
                    "requests": int(req),
                    "prompt_tokens": int(prompt),
                    "completion_tokens": int(completion),
                    "self_hosted_usd": _usd(cost),
                    "self_hosted_with_idle_usd": _usd((cost or 0) + (idle_share or 0)),
                    "managed_usd": managed,
                }
            )
        return {
            "since": iso(since),
            "until": iso(until),
            "provisional": final is None or asked > final,
            "provisional_since": iso(final),
            "rows": rows,
            "managed_prices": {
                name: {
                    "input_per_mtok": p.input_per_mtok,
                    "output_per_mtok": p.output_per_mtok,
                    "source": p.source,
                    "as_of": p.as_of,
                }
                for name, p in sorted(self.catalog.managed.items())
            },
        }

    def cache_savings(self, since: datetime, until: datetime) -> dict[str, Any]:
        """What cache hits would have cost at each model's current rate."""
        since, until = self._range(since, until)
        rates = self.rates()
        rows = []
        for tenant, model, hits, prompt, completion in self._rows(
            query("reports", "cache_hits"), {"since": since, "until": until}
        ):
            rate = rates["models"].get(model, rates["default"])
            saved = (prompt or 0) * rate["usd_per_prompt_token"] + (completion or 0) * rate[
                "usd_per_completion_token"
            ]
            rows.append(
                {
                    "tenant": tenant,
                    "model": model,
                    "hits": hits,
                    "prompt_tokens": int(prompt or 0),
                    "completion_tokens": int(completion or 0),
                    "saved_usd": round(saved, 6),
                }
            )
        return {"rows": rows, "total_saved_usd": round(sum(r["saved_usd"] for r in rows), 6)}

    def tenant_spend(self, tenant: str, since: datetime, until: datetime) -> float:
        """A tenant's cost in USD over a range (idle share included when shared). Allocation
        keeps tenant totals per hour: the hour containing ``since`` counts pro rata."""
        h_since = _floor_hour(since)
        rows = self._rows(
            query("reports", "tenant_spend_rollup"),
            {
                "h_since": h_since,
                "first_fraction": 1 - (since - h_since).total_seconds() / 3600,
                "until": until,
                "tenant": tenant,
                "share_idle": self.share_idle,
            },
        )
        cost, idle = rows[0] if rows else (0, 0)
        return ((cost or 0) + (idle or 0)) / 1e6

    def provisional_since(self) -> datetime | None:
        """Where final numbers end: the end of the last allocated window, never after the
        start of the open window (the one containing now, still filling). Time from here on
        is not allocated yet, or not closed; None before the first allocation."""
        last = self.allocated_until()
        if last is None:
            return None
        now = self._now()
        open_start = now - (now - datetime.min) % self.window
        return min(last + self.window, open_start)

    def allocated_until(self) -> datetime | None:
        """End of the last allocated window (None before the first run)."""
        rows = self._rows(query("reports", "allocated_until"), {})
        return rows[0][0] if rows and rows[0][0] is not None else None
