"""Tenants: the tenants metering and throttle know, spend against budget with projected
overrun, throttle's decisions and their reasons over time, and fair-share state."""

from __future__ import annotations

from functools import partial
from typing import Any

import pandas as pd
import streamlit as st

from infermeter.dashboards import ui
from infermeter.dashboards.errors import DashboardError, ServiceUnavailable
from infermeter.dashboards.frames.costs import cost_frame, cost_totals
from infermeter.dashboards.frames.tenants import (
    decision_counts,
    decision_log_frame,
    decisions_frame,
    decisions_over_time,
    tenant_frame,
    usage_from_listing,
)

ALL = "All tenants"


def _usage(ctx: ui.Context, tenants: list[str]) -> dict[str, dict[str, Any]]:
    """Live limits of tenants throttle does not list (metering saw them; throttle applies
    its default tier to them)."""
    out: dict[str, dict[str, Any]] = {}
    for tenant in tenants[: ctx.settings.max_tenants]:
        try:
            out[tenant] = ctx.throttle.tenant_usage(tenant)
        except ServiceUnavailable as exc:
            st.warning(f"Live limits unavailable: {exc} — {ui.START_HINT['throttle']}.")
            break
        except DashboardError as exc:
            st.error(f"Live limits of {tenant}: {exc}")
    return out


def _decisions(ctx: ui.Context, tenants: list[str]) -> list[dict[str, Any]] | None:
    """Each tenant's recent decisions in the range (None when throttle is unreachable)."""
    window = ctx.window()
    bodies = []
    for tenant in tenants[: ctx.settings.max_tenants]:
        body = ui.fetch(partial(ctx.throttle.decisions, tenant, window.since), "decisions")
        if body is None:
            return None
        bodies.append(body)
    return bodies


def _decisions_section(ctx: ui.Context, listing: dict[str, Any] | None) -> None:
    window = ctx.window()
    st.subheader("Throttle decisions over time")
    if listing is not None:
        active = [t["tenant"] for t in listing.get("tenants", []) if t.get("recent")]
        bodies = _decisions(ctx, active)
        if bodies is not None:
            log = decision_log_frame(bodies)
            log = log[log["ts"] < pd.Timestamp(window.until)]
            _decision_charts(ctx, log)
    with st.expander("Totals since throttle started (its /metrics, every tenant)"):
        samples = ui.fetch(
            lambda: ctx.throttle.metrics("infermeter_throttle_decisions"), "decisions"
        )
        if samples is not None:
            decisions = decisions_frame(samples)
            if not decisions.empty:
                refused = decisions[decisions["decision"] != "allow"]["count"].sum()
                st.metric("Refused since throttle start", f"{int(refused):,}")
            ui.table(
                decisions, "throttle-decisions", "No admission decisions since throttle started."
            )


def _decision_charts(ctx: ui.Context, log: pd.DataFrame) -> None:
    if log.empty:
        st.info("Throttle took no admission decision in this range (or has restarted since).")
        return
    counts = decision_counts(log)
    cols = st.columns(3)
    cols[0].metric("Decisions in range", f"{len(log):,}")
    cols[1].metric("Refused in range", f"{int(counts['denied'].sum()):,}")
    cols[2].metric("Refused share", f"{counts['denied'].sum() / len(log):.1%}")
    tenants = sorted(log["tenant"].unique())
    pick = st.selectbox("Decisions of", [ALL, *tenants], key="decisions-tenant")
    shown = log if pick == ALL else log[log["tenant"] == pick]
    grain = ctx.series_granularity()
    st.caption(
        f"Decisions per {grain} by outcome and reason ({pick.lower() if pick == ALL else pick})"
    )
    wide = decisions_over_time(shown, grain, (ctx.window().since, ctx.window().until))
    wide.index = wide.index.strftime("%m-%d %H:%M" if grain != "day" else "%Y-%m-%d")
    st.bar_chart(wide)  # one bar per bucket of the range (categorical), stacked by outcome
    ui.table(counts, "decision-counts", "")
    st.caption(
        "From each throttle replica's bounded in-memory log of recent decisions (the newest "
        "per tenant): a restart forgets them, and behind several replicas each answers for its own."
    )
    with st.expander(f"Every decision ({pick})"):
        ui.table(shown.sort_values("ts", ascending=False), "decision-log", "")


def render(ctx: ui.Context) -> None:
    window = ctx.window()
    st.caption(f"{window.since:%Y-%m-%d %H:%M} → {window.until:%Y-%m-%d %H:%M} UTC")
    report = ui.fetch(lambda: ctx.metering.cost("tenant", window, "total"), "tenant spend")
    budgets = ui.fetch(ctx.metering.budgets, "budgets")
    listing = ui.fetch(lambda: ctx.throttle.tenants(ctx.settings.max_tenants), "throttle's tenants")
    if report is None:
        return
    spend = cost_totals(cost_frame(report), "tenant")
    states = (budgets or {}).get("tenants", [])
    usage: dict[str, dict[str, Any]] = {}
    known: list[str] = []
    if listing is not None:
        listed = [usage_from_listing(t) for t in listing.get("tenants", [])]
        usage = {u["tenant"]: u for u in listed}
        known = list(usage)
        metering_names = dict.fromkeys([*spend["tenant"], *(s["tenant"] for s in states)])
        usage.update(_usage(ctx, [n for n in metering_names if n not in usage]))
    table = tenant_frame(spend, states, usage, known)

    over = table[table["projected_overrun_usd"].fillna(0) > 0]
    cols = st.columns(3)
    cols[0].metric("Tenants", len(table))
    cols[1].metric("Spend in range", ui.usd(float(spend["total_usd"].sum()) if len(spend) else 0))
    cols[2].metric("Projected over budget", len(over))
    for row in over.to_dict("records"):
        st.warning(
            f"{row['tenant']} is projected to exceed its budget by "
            f"{ui.usd(row['projected_overrun_usd'])} this period."
        )
    if spend.empty:
        st.info("No metered spend in this range yet.")
    else:
        st.caption("Spend in range ($)")
        st.bar_chart(spend.set_index("tenant")[["total_usd"]], horizontal=True)
    ui.table(table, "tenants", "No tenant usage, budgets or throttle decisions yet.")
    if listing is not None and listing.get("truncated"):
        st.caption(f"Throttle knows {listing.get('total')} tenants; the first {len(known)} shown.")

    _decisions_section(ctx, listing)

    st.subheader("Fair share")
    pools = ui.fetch(ctx.throttle.autoscale, "pool pressure")
    if pools is not None:
        pressured = [p["pool"] for p in pools if p.get("pressure")]
        if pressured:
            st.warning(f"Fair-share mode (pool under pressure): {', '.join(pressured)}.")
        elif pools:
            st.success("No pool under pressure: tenants are limited by their own budgets only.")
        fair = table[["tenant", "weight", "fair_share", "in_flight"]]
        fair = fair[fair["fair_share"].fillna("") != ""]
        ui.table(fair, "fair-share", "No virtual-token counters yet (no pool has been pressured).")


ctx = ui.context()
if ctx is not None:
    st.title("Tenants")
    ui.live(ctx, render)
