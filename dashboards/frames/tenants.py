"""The Tenants page's frames: one row per tenant joining metering's spend and budgets with
throttle's live limits, and throttle's admission decisions (the log, per bucket and outcome,
per tenant, and the decision counters of a scrape)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from infermeter.dashboards.client import Sample
from infermeter.dashboards.frames.base import Clip, table

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
    return table(rows, TENANT_COLUMNS)


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
    frame = table(rows, DECISION_COLUMNS)
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
        return table([], base)
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
    frame = table(rows, ("decision", "reason", "count", "share"))
    total = frame["count"].sum()
    frame["share"] = (frame["count"] / total).round(4) if total else 0.0
    return frame.sort_values("count", ascending=False, ignore_index=True)
