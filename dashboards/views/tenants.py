"""Tenants: usage, spend against budget with projected overrun, throttle decisions and
fair-share state."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboards import frames, ui
from dashboards.errors import DashboardError, ServiceUnavailable


def _usage(ctx: ui.Context, tenants: list[str]) -> dict[str, dict[str, Any]]:
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


def render(ctx: ui.Context) -> None:
    window = ctx.window()
    st.caption(f"{window.since:%Y-%m-%d %H:%M} → {window.until:%Y-%m-%d %H:%M} UTC")
    report = ui.fetch(lambda: ctx.metering.cost("tenant", window, "total"), "tenant spend")
    budgets = ui.fetch(ctx.metering.budgets, "budgets")
    if report is None:
        return
    spend = frames.cost_totals(frames.cost_frame(report), "tenant")
    states = (budgets or {}).get("tenants", [])
    names = list(dict.fromkeys([*spend["tenant"], *(s["tenant"] for s in states)]))
    usage = _usage(ctx, names) if names else {}
    table = frames.tenant_frame(spend, states, usage)

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
    if not table.empty:
        st.bar_chart(spend.set_index("tenant")[["total_usd"]])
    ui.table(table, "tenants", "No tenant usage or budgets in this range yet.")

    st.subheader("Throttle decisions")
    samples = ui.fetch(lambda: ctx.throttle.metrics("infermeter_throttle_decisions"), "decisions")
    if samples is not None:
        decisions = frames.decisions_frame(samples)
        if not decisions.empty:
            refused = decisions[decisions["decision"] != "allow"]["count"].sum()
            st.metric("Refused since throttle start", f"{int(refused):,}")
        ui.table(decisions, "throttle-decisions", "No admission decisions since throttle started.")

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
