"""Pure functions that turn the services' JSON into the tables and series the pages show.

Nothing here does I/O; every function takes the decoded JSON of one endpoint (or a scrape)
and returns a :class:`pandas.DataFrame` with stable, human-readable column names, empty (but
with those columns) when the JSON holds no rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from infermeter.dashboards.client import Sample

GIB = float(1 << 30)


def _frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(columns))


def _ts(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True, format="ISO8601")


# -- fleet -----------------------------------------------------------------------------------
LATENCY_COLUMNS = (
    "bucket", "bucket_s", "requests", "requests_per_s", "errors", "client_aborts",
    "prompt_tokens_per_s", "output_tokens_per_s",
    "ttft_p50_s", "ttft_p95_s", "ttft_p99_s", "itl_p50_s", "itl_p95_s",
    "e2e_p50_s", "e2e_p95_s", "e2e_p99_s", "queue_p50_s", "queue_p95_s",
)  # fmt: skip
BUCKET_SECONDS = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}


Clip = tuple[datetime, datetime]


def covered_seconds(bucket: str, seconds: float, clip: Clip | None) -> float:
    """How much of the bucket starting at ``bucket`` lies in ``clip`` (since, until): the
    range's first and last buckets are partial (the current hour has not ended)."""
    if clip is None:
        return seconds
    start = datetime.fromisoformat(bucket.replace("Z", "+00:00"))
    end = start + timedelta(seconds=seconds)
    covered = (min(end, clip[1]) - max(start, clip[0])).total_seconds()
    return seconds if covered <= 0 else float(min(seconds, max(round(covered), 1)))


def _rescaled(rate: float | None, seconds: float, covered: float) -> float | None:
    return None if rate is None else round(rate * seconds / covered, 3)


def latency_frame(report: Mapping[str, Any], clip: Clip | None = None) -> pd.DataFrame:
    """``/v1/reports/latency`` as one row per bucket (per pool or replica too when the report
    was asked ``by`` one) with flat percentile columns; rates over the part of each bucket
    inside ``clip`` (metering divides by the whole bucket)."""
    seconds = BUCKET_SECONDS.get(str(report.get("granularity", "hour")), 3600.0)
    by = str(report.get("by") or "")
    rows = []
    for r in report.get("rows", []):
        covered = covered_seconds(r["bucket"], seconds, clip)
        row: dict[str, Any] = {
            **({by: r.get(by, "")} if by else {}),
            "bucket": r["bucket"],
            "bucket_s": covered,
            "requests": r["requests"],
            "requests_per_s": round(r["requests"] / covered, 6),
            "errors": r.get("errors", 0),
            "client_aborts": r.get("client_aborts", 0),
            "prompt_tokens_per_s": _rescaled(r.get("prompt_tokens_per_s"), seconds, covered),
            "output_tokens_per_s": _rescaled(r.get("output_tokens_per_s"), seconds, covered),
        }
        for metric in ("ttft", "itl", "e2e", "queue"):
            for q, value in (r.get(f"{metric}_s") or {}).items():
                row[f"{metric}_{q}_s"] = value
        rows.append(row)
    frame = _frame(rows, ((by,) if by else ()) + LATENCY_COLUMNS)
    frame["bucket"] = _ts(frame["bucket"])
    return frame


REPLICA_LOAD_COLUMNS = (
    "bucket", "replica", "requests", "requests_per_s", "tokens_per_s",
    "prompt_tokens", "completion_tokens",
)  # fmt: skip


def replica_load_frame(
    report: Mapping[str, Any], key: str = "replica", clip: Clip | None = None
) -> pd.DataFrame:
    """Requests/s and tokens/s per replica (or pool) per bucket, from a cost report by it;
    rates over the part of each bucket inside ``clip``."""
    granularity = BUCKET_SECONDS.get(str(report.get("granularity", "hour")), 3600.0)
    rows = []
    for r in report.get("rows", []):
        seconds = covered_seconds(r["bucket"], granularity, clip)
        tokens = r["prompt_tokens"] + r["completion_tokens"]
        rows.append(
            {
                "bucket": r["bucket"],
                "replica": r.get(key) or "(none)",
                "requests": r["requests"],
                "requests_per_s": round(r["requests"] / seconds, 6),
                "tokens_per_s": round(tokens / seconds, 3),
                "prompt_tokens": r["prompt_tokens"],
                "completion_tokens": r["completion_tokens"],
            }
        )
    frame = _frame(rows, REPLICA_LOAD_COLUMNS)
    frame["bucket"] = _ts(frame["bucket"])
    return frame.rename(columns={"replica": key})


GPU_COLUMNS = (
    "bucket", "replica", "device", "gpu_model", "mig_profile", "util_pct",
    "mem_used_gib", "mem_total_gib", "power_w", "energy_kwh", "temp_c",
)  # fmt: skip


def gpu_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    """``/v1/reports/gpu``: one row per bucket and GPU or MIG slice (``device``)."""
    rows = []
    for r in report.get("rows", []):
        device = r["gpu_uuid"] + (f"/{r['mig_uuid']}" if r.get("mig_uuid") else "")
        rows.append(
            {
                "bucket": r["bucket"],
                "replica": r.get("replica") or "(unassigned)",
                "device": device,
                "gpu_model": r.get("gpu_model", ""),
                "mig_profile": r.get("mig_profile") or "",
                "util_pct": r.get("util_pct"),
                "mem_used_gib": _div(r.get("mem_used_bytes"), GIB),
                "mem_total_gib": _div(r.get("mem_total_bytes"), GIB),
                "power_w": r.get("power_w"),
                "energy_kwh": _div(r.get("energy_j"), 3.6e6),
                "temp_c": r.get("temp_c"),
            }
        )
    frame = _frame(rows, GPU_COLUMNS)
    frame["bucket"] = _ts(frame["bucket"])
    return frame


def _div(value: Any, by: float) -> float | None:
    return None if value is None else round(float(value) / by, 6)


def pivot(frame: pd.DataFrame, index: str, columns: str, values: str) -> pd.DataFrame:
    """A wide frame for a line chart: one column per ``columns`` value, indexed by ``index``."""
    if frame.empty:
        return pd.DataFrame()
    return frame.pivot_table(index=index, columns=columns, values=values, aggfunc="mean")


# -- costs -----------------------------------------------------------------------------------
COST_COLUMNS = (
    "bucket", "key", "total_usd", "cost_usd", "idle_share_usd", "requests",
    "prompt_tokens", "cached_prompt_tokens", "completion_tokens", "usd_per_mtok",
    "gpu_seconds", "kwh",
)  # fmt: skip


def cost_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    """``/v1/reports/cost``: one row per bucket and key (column named after ``by``)."""
    by = str(report.get("by", "key"))
    rows = [{**r, "key": r.get(by) or "(none)"} for r in report.get("rows", [])]
    frame = _frame(rows, COST_COLUMNS)
    frame["bucket"] = _ts(frame["bucket"])
    return frame.rename(columns={"key": by})


def cost_totals(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    """Sum a cost frame over buckets: one row per key, most expensive first, with $/Mtok."""
    columns = [by, "total_usd", "requests", "tokens", "usd_per_mtok"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    grouped = frame.groupby(by, as_index=False)[
        ["total_usd", "requests", "prompt_tokens", "completion_tokens"]
    ].sum()
    grouped["tokens"] = grouped["prompt_tokens"] + grouped["completion_tokens"]
    grouped["usd_per_mtok"] = [
        round(usd * 1e6 / tok, 6) if tok else None
        for usd, tok in zip(grouped["total_usd"], grouped["tokens"], strict=True)
    ]
    grouped["total_usd"] = grouped["total_usd"].round(6)
    return grouped[columns].sort_values("total_usd", ascending=False, ignore_index=True)


def effective_usd_per_mtok(report: Mapping[str, Any]) -> float | None:
    """Fleet-wide $ per million tokens: allocated (+ shared idle) cost over all tokens."""
    rows = report.get("rows", [])
    tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    usd = sum(r["total_usd"] for r in rows)
    return round(usd * 1e6 / tokens, 6) if tokens else None


IDLE_COLUMNS = (
    "replica", "cost_usd", "allocated_usd", "idle_usd", "idle_fraction", "utilization",
    "busy_s", "provisioned_s", "gpu_seconds", "kwh",
)  # fmt: skip


def idle_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    """``/v1/reports/idle`` summed over buckets: cost, idle cost and utilisation per key."""
    by = str(report.get("by", "replica"))
    sums: dict[str, dict[str, float]] = {}
    for r in report.get("rows", []):
        acc = sums.setdefault(r.get(by) or "(none)", dict.fromkeys(IDLE_COLUMNS[1:], 0.0))
        for col in ("cost_usd", "allocated_usd", "idle_usd", "busy_s", "provisioned_s",
                    "gpu_seconds", "kwh"):  # fmt: skip
            acc[col] += float(r.get(col) or 0.0)
    rows = []
    for key, acc in sorted(sums.items()):
        prov, cost = acc["provisioned_s"], acc["cost_usd"]
        rows.append(
            {
                **{k: round(v, 6) for k, v in acc.items()},
                "replica": key,
                "utilization": round(acc["busy_s"] / prov, 6) if prov else None,
                "idle_fraction": round(acc["idle_usd"] / cost, 6) if cost else None,
            }
        )
    return _frame(rows, IDLE_COLUMNS).rename(columns={"replica": by})


def buy_vs_build_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    """``/v1/reports/buy-vs-build``: one row per model (summed over tenants), one column per
    managed API, plus the cheapest managed option and the self-hosted saving against it."""
    managed = sorted(report.get("managed_prices", {}))
    columns = ["model", "requests", "prompt_tokens", "completion_tokens", "self_hosted_usd",
               "self_hosted_with_idle_usd", *(f"managed:{m}" for m in managed)]  # fmt: skip
    sums: dict[str, dict[str, float]] = {}
    for r in report.get("rows", []):
        acc = sums.setdefault(r["model"], dict.fromkeys(columns[1:], 0.0))
        for col in columns[1:6]:
            acc[col] += float(r.get(col) or 0.0)
        for name, usd in r.get("managed_usd", {}).items():
            acc[f"managed:{name}"] = acc.get(f"managed:{name}", 0.0) + float(usd)
    rows = [
        {"model": model, **{k: round(v, 6) for k, v in acc.items()}}
        for model, acc in sorted(sums.items())
    ]
    frame = _frame(rows, columns)
    if managed and not frame.empty:
        managed_cols = [f"managed:{m}" for m in managed]
        frame["cheapest_managed"] = frame[managed_cols].idxmin(axis=1).str.removeprefix("managed:")
        frame["cheapest_managed_usd"] = frame[managed_cols].min(axis=1)
        frame["saving_vs_cheapest_usd"] = (
            frame["cheapest_managed_usd"] - frame["self_hosted_with_idle_usd"]
        ).round(6)
    return frame


CACHE_COLUMNS = ("tenant", "model", "hits", "prompt_tokens", "completion_tokens", "saved_usd")


def cache_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    """``/v1/reports/cache-savings``: one row per tenant and model."""
    return _frame(report.get("rows", []), CACHE_COLUMNS)


# -- tenants ---------------------------------------------------------------------------------
TENANT_COLUMNS = (
    "tenant", "known_to", "tier", "spend_usd", "requests", "tokens",
    "daily_limit_usd", "daily_spent_usd", "daily_projected_usd", "daily_will_exceed",
    "monthly_limit_usd", "monthly_spent_usd", "monthly_projected_usd", "monthly_will_exceed",
    "projected_overrun_usd",
    "rate_remaining", "in_flight", "concurrency_limit", "weight", "fair_share",
)  # fmt: skip


def usage_from_listing(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One tenant of throttle's ``GET /v1/tenants`` in the shape of its
    ``/v1/tenants/{tenant}/usage`` (the fields :func:`tenant_frame` reads)."""
    u = entry.get("usage") or {}
    return {
        "tenant": entry["tenant"],
        "tier": entry.get("tier"),
        "weight": entry.get("weight"),
        "rate": {"remaining": u.get("rate_remaining"), "reset_s": u.get("rate_reset_s")},
        "concurrency": {"limit": u.get("concurrency_limit"), "in_flight": u.get("in_flight")},
        "fair_share": u.get("fair_share") or {},
    }


def tenant_frame(
    spend: pd.DataFrame,
    budgets: Iterable[Mapping[str, Any]],
    usage: Mapping[str, Mapping[str, Any]],
    throttle_known: Iterable[str] = (),
) -> pd.DataFrame:
    """One row per tenant: spend in the range (``cost_totals`` by tenant), metering budget
    state (with the projected overrun over the tighter period) and throttle's live usage;
    ``known_to`` says which service lists the tenant (``throttle_known``: throttle's list)."""
    by_tenant: dict[str, dict[str, Any]] = {}
    for row in spend.to_dict("records"):
        by_tenant[row["tenant"]] = {
            "tenant": row["tenant"],
            "spend_usd": row["total_usd"],
            "requests": row["requests"],
            "tokens": row["tokens"],
        }
    for state in budgets:
        row = by_tenant.setdefault(state["tenant"], {"tenant": state["tenant"]})
        overrun = 0.0
        for period in ("daily", "monthly"):
            p = state.get(period) or {}
            row[f"{period}_limit_usd"] = p.get("limit_usd")
            row[f"{period}_spent_usd"] = p.get("spent_usd")
            row[f"{period}_projected_usd"] = p.get("projected_usd")
            row[f"{period}_will_exceed"] = bool(p.get("will_exceed"))
            if p.get("limit_usd") and p.get("projected_usd") is not None:
                overrun = max(overrun, p["projected_usd"] - p["limit_usd"])
        row["projected_overrun_usd"] = round(overrun, 6)
    for tenant, u in usage.items():
        row = by_tenant.setdefault(tenant, {"tenant": tenant})
        row["tier"] = u.get("tier")
        row["rate_remaining"] = (u.get("rate") or {}).get("remaining")
        row["in_flight"] = (u.get("concurrency") or {}).get("in_flight")
        row["concurrency_limit"] = (u.get("concurrency") or {}).get("limit")
        row["weight"] = u.get("weight")
        fair = u.get("fair_share") or {}
        row["fair_share"] = ", ".join(f"{k}={v:.4g}" for k, v in sorted(fair.items())) or ""
    metering = set(spend["tenant"]) | {state["tenant"] for state in budgets}
    throttle = set(throttle_known)
    for name in throttle - by_tenant.keys():
        by_tenant[name] = {"tenant": name}
    for name, row in by_tenant.items():
        row["known_to"] = " + ".join(
            label for label, names in (("metering", metering), ("throttle", throttle))
            if name in names
        )  # fmt: skip
    rows = sorted(by_tenant.values(), key=lambda r: (-(r.get("spend_usd") or 0.0), r["tenant"]))
    return _frame(rows, TENANT_COLUMNS)


DECISION_COLUMNS = ("ts", "tenant", "decision", "reason", "outcome", "cost")
ALLOW = "allow"


def decision_log_frame(bodies: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Throttle's ``/v1/tenants/{tenant}/decisions`` answers as one row per decision, oldest
    first; ``outcome`` is ``allow`` or ``deny: <reason>``."""
    rows = []
    for body in bodies:
        for d in body.get("decisions", []):
            reason = str(d.get("reason") or "")
            allowed = d.get("decision") == ALLOW
            rows.append(
                {
                    "ts": float(d["ts"]),
                    "tenant": body.get("tenant", ""),
                    "decision": d.get("decision", ""),
                    "reason": reason,
                    "outcome": ALLOW if allowed else f"deny: {reason or 'unspecified'}",
                    "cost": d.get("cost"),
                }
            )
    frame = _frame(rows, DECISION_COLUMNS)
    frame["ts"] = pd.to_datetime(frame["ts"].astype(float), unit="s", utc=True)
    return frame.sort_values(["ts", "tenant"], ignore_index=True)


FREQ = {"minute": "min", "hour": "h", "day": "D"}


def _outcome_order(columns: Iterable[str]) -> list[str]:
    return sorted(columns, key=lambda c: (c != ALLOW, c))


def decisions_over_time(
    frame: pd.DataFrame, granularity: str, clip: Clip | None = None
) -> pd.DataFrame:
    """Decisions per bucket (index) and outcome (one column each, ``allow`` first); with
    ``clip`` (since, until), every bucket of the range is there, zero when quiet."""
    freq = FREQ.get(granularity, "h")
    if frame.empty:
        wide = pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC"))
    else:
        bucketed = frame.assign(bucket=frame["ts"].dt.floor(freq))
        wide = bucketed.pivot_table(
            index="bucket", columns="outcome", values="tenant", aggfunc="count", fill_value=0
        )
        wide.columns.name = None
        wide = wide[_outcome_order(wide.columns)]
    if clip is not None:
        since, until = (pd.Timestamp(t).tz_convert("UTC") for t in clip)
        buckets = pd.date_range(since.floor(freq), until, freq=freq, inclusive="left")
        wide = wide.reindex(buckets, fill_value=0)
    wide.index.name = "bucket"
    return wide.astype(int)


def decision_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per tenant: decisions, allowed, denied, the denied share and the count of each
    outcome (one column each), the busiest deniers first."""
    base = ["tenant", "decisions", "allowed", "denied", "denied_share"]
    if frame.empty:
        return _frame([], base)
    wide = frame.pivot_table(
        index="tenant", columns="outcome", values="ts", aggfunc="count", fill_value=0
    )
    wide.columns.name = None
    wide = wide[_outcome_order(wide.columns)].astype(int)
    total = wide.sum(axis=1)
    allowed = wide[ALLOW] if ALLOW in wide.columns else total * 0
    out = pd.DataFrame(
        {
            "decisions": total,
            "allowed": allowed,
            "denied": total - allowed,
            "denied_share": ((total - allowed) / total).round(4),
        }
    )
    out = out.join(wide.drop(columns=[ALLOW], errors="ignore")).reset_index()
    return out.sort_values(["denied", "tenant"], ascending=[False, True], ignore_index=True)


def decisions_frame(samples: Iterable[Sample]) -> pd.DataFrame:
    """``infermeter_throttle_decisions_total`` by decision and reason, with the share of each."""
    rows = [
        {"decision": s.labels.get("decision", ""), "reason": s.labels.get("reason", ""),
         "count": int(s.value)}
        for s in samples
        if s.name == "infermeter_throttle_decisions_total"
    ]  # fmt: skip
    frame = _frame(rows, ("decision", "reason", "count", "share"))
    total = frame["count"].sum()
    frame["share"] = (frame["count"] / total).round(4) if total else 0.0
    return frame.sort_values("count", ascending=False, ignore_index=True)


# -- capacity --------------------------------------------------------------------------------
AUTOSCALE_COLUMNS = (
    "pool", "current_replicas", "desired_replicas", "raw_desired_replicas", "change",
    "driver", "pressure", "saturated",
)  # fmt: skip
SIGNAL_COLUMNS = ("pool", "signal", "observed", "target", "ratio", "desired", "drives")


def autoscale_frames(pools: Iterable[Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``/v1/autoscale``: desired vs current per pool, and every signal's own answer (the
    one that drives the recommendation flagged)."""
    rows, signals = [], []
    for p in pools:
        rows.append(
            {
                "pool": p["pool"],
                "current_replicas": p["current_replicas"],
                "desired_replicas": p["desired_replicas"],
                "raw_desired_replicas": p.get("raw_desired_replicas"),
                "change": p["desired_replicas"] - p["current_replicas"],
                "driver": p.get("driver", ""),
                "pressure": bool(p.get("pressure")),
                "saturated": ", ".join(p.get("saturated") or []),
            }
        )
        for name, s in sorted((p.get("signals") or {}).items()):
            signals.append({"pool": p["pool"], "signal": name, **s,
                            "drives": name == p.get("driver")})  # fmt: skip
    return _frame(rows, AUTOSCALE_COLUMNS), _frame(signals, SIGNAL_COLUMNS)


ENGINE_COLUMNS = ("pool", "signal", "value")


def engine_frame(samples: Iterable[Sample]) -> pd.DataFrame:
    """Throttle's per-pool mean of each engine signal (queue, KV cache, tokens/s, TTFT)."""
    rows = [
        {"pool": s.labels.get("pool", ""), "signal": s.labels.get("signal", ""), "value": s.value}
        for s in samples
        if s.name == "infermeter_throttle_pool_signal"
    ]
    return _frame(rows, ENGINE_COLUMNS)


# -- request lookup --------------------------------------------------------------------------
WINDOW_COLUMNS = (
    "window_start", "replica", "cost_usd", "work", "prefill_tokens", "decode_tokens",
    "gpu_seconds", "energy_j",
)  # fmt: skip


def request_summary(found: Mapping[str, Any]) -> dict[str, Any]:
    """The headline figures of one request: latency, tokens and cost."""
    rec = found.get("record", {})
    prompt = int(rec.get("prompt_tokens") or 0)
    completion = int(rec.get("completion_tokens") or 0)
    cost = float(found.get("cost_usd") or 0.0)
    return {
        "request_id": found.get("request_id"),
        "tenant": rec.get("tenant"),
        "model": rec.get("model"),
        "replica": rec.get("replica"),
        "status": rec.get("status"),
        "ttft_s": rec.get("ttft_s"),
        "e2e_s": rec.get("e2e_s"),
        "itl_mean_s": rec.get("itl_mean_s"),
        "queue_s": rec.get("queue_s"),
        "prompt_tokens": prompt,
        "cached_prompt_tokens": int(rec.get("cached_prompt_tokens") or 0),
        "completion_tokens": completion,
        "cost_usd": cost,
        "usd_per_mtok": round(cost * 1e6 / (prompt + completion), 6)
        if prompt + completion
        else None,
        "gpu_seconds": found.get("gpu_seconds"),
        "kwh": found.get("kwh"),
        "allocated": bool(found.get("allocated")),
    }


def request_windows(found: Mapping[str, Any]) -> pd.DataFrame:
    """The request's cost per allocation window."""
    frame = _frame(found.get("windows", []), WINDOW_COLUMNS)
    frame["window_start"] = _ts(frame["window_start"])
    return frame


def latency_totals(frame: pd.DataFrame, seconds: float) -> dict[str, float | None]:
    """Headline figures of a latency frame over a range of ``seconds``."""
    if frame.empty or seconds <= 0:
        return {"requests": 0, "requests_per_s": None, "output_tokens_per_s": None,
                "ttft_p95_s_worst": None, "e2e_p95_s_worst": None}  # fmt: skip
    return {
        "requests": int(frame["requests"].sum()),
        "requests_per_s": round(float(frame["requests"].sum()) / seconds, 6),
        "output_tokens_per_s": round(
            float((frame["output_tokens_per_s"] * frame["bucket_s"]).sum()) / seconds, 3
        ),
        "ttft_p95_s_worst": _max(frame["ttft_p95_s"]),
        "e2e_p95_s_worst": _max(frame["e2e_p95_s"]),
    }


def _max(values: pd.Series) -> float | None:
    cleaned = values.dropna()
    return None if cleaned.empty else round(float(cleaned.max()), 6)


GPU_SUMMARY_COLUMNS = (
    "device", "replica", "gpu_model", "mig_profile", "util_pct_mean", "mem_used_gib_max",
    "mem_total_gib", "power_w_mean", "energy_kwh",
)  # fmt: skip


def gpu_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per GPU or MIG slice over the whole range."""
    if frame.empty:
        return pd.DataFrame(columns=list(GPU_SUMMARY_COLUMNS))
    grouped = frame.groupby(["device", "replica", "gpu_model", "mig_profile"], as_index=False).agg(
        util_pct_mean=("util_pct", "mean"),
        mem_used_gib_max=("mem_used_gib", "max"),
        mem_total_gib=("mem_total_gib", "max"),
        power_w_mean=("power_w", "mean"),
        energy_kwh=("energy_kwh", "sum"),
    )
    return grouped[list(GPU_SUMMARY_COLUMNS)].round(4)
