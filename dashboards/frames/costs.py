"""The Costs page's frames (cost and totals by tenant also feed the Tenants page): cost per
bucket and key, totals with $ per million tokens, idle cost and utilisation per replica, buy
vs build against managed APIs, and the semantic cache's savings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from infermeter.dashboards.frames.base import table, utc

COST_COLUMNS = (
    "bucket", "key", "total_usd", "cost_usd", "idle_share_usd", "requests",
    "prompt_tokens", "cached_prompt_tokens", "completion_tokens", "usd_per_mtok",
    "gpu_seconds", "kwh",
)  # fmt: skip


def cost_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    """``/v1/reports/cost``: one row per bucket and key (column named after ``by``)."""
    by = str(report.get("by", "key"))
    rows = [{**r, "key": r.get(by) or "(none)"} for r in report.get("rows", [])]
    frame = table(rows, COST_COLUMNS)
    frame["bucket"] = utc(frame["bucket"])
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
    return table(rows, IDLE_COLUMNS).rename(columns={"replica": by})


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
    frame = table(rows, columns)
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
    return table(report.get("rows", []), CACHE_COLUMNS)
