"""Costs: by tenant, model, feature and day; $ per million tokens; idle cost; buy vs build;
cache savings."""

from __future__ import annotations

from functools import partial

import streamlit as st

from infermeter.dashboards import ui
from infermeter.dashboards.frames.base import pivot
from infermeter.dashboards.frames.costs import (
    buy_vs_build_frame,
    cache_frame,
    cost_frame,
    cost_totals,
    effective_usd_per_mtok,
    idle_frame,
)

DIMENSIONS = (("tenant", "Tenant"), ("model", "Model"), ("feature", "Feature"))


def render(ctx: ui.Context) -> None:
    window = ctx.window()
    st.caption(f"{window.since:%Y-%m-%d %H:%M} → {window.until:%Y-%m-%d %H:%M} UTC")
    grain = ctx.cost_granularity()
    daily = ui.fetch(lambda: ctx.metering.cost("tenant", window, grain), "costs")
    if daily is None:
        return
    totals = daily.get("totals", {})
    cols = st.columns(5)
    cols[0].metric("GPU cost (replicas)", ui.usd(totals.get("replica_cost_usd")))
    cols[1].metric("Allocated to requests", ui.usd(totals.get("allocated_usd")))
    cols[2].metric("Idle", ui.usd(totals.get("idle_usd")))
    per_mtok = effective_usd_per_mtok(daily)
    cols[3].metric("Effective $ / M tokens", ui.usd(per_mtok, 4))
    savings = ui.fetch(lambda: ctx.metering.cache_savings(window), "cache savings")
    cols[4].metric("Cache savings", ui.usd(savings.get("total_saved_usd") if savings else None))
    if not daily.get("rows") and not daily.get("idle"):
        st.info(
            "No allocated cost in this range yet: metering allocates closed windows "
            "(a few minutes behind real time) once usage records arrive."
        )

    st.subheader(f"Cost per {grain} and tenant")
    by_day = cost_frame(daily)
    if not by_day.empty:
        wide = pivot(by_day, "bucket", "tenant", "total_usd")
        wide.index = wide.index.strftime("%m-%d %H:%M" if grain == "hour" else "%Y-%m-%d")
        st.bar_chart(wide)  # one bar per bucket (categorical), stacked by tenant
    ui.table(by_day, f"cost-by-tenant-{grain}", f"No cost per {grain} in this range.")

    tabs = st.tabs([label for _, label in DIMENSIONS])
    for tab, (dim, label) in zip(tabs, DIMENSIONS, strict=True):
        with tab:
            report = ui.fetch(partial(ctx.metering.cost, dim, window, "total"), label)
            if report is None:
                continue
            summed = cost_totals(cost_frame(report), dim)
            if not summed.empty:
                st.bar_chart(summed.set_index(dim)[["total_usd"]])
            ui.table(summed, f"cost-by-{dim}", f"No cost by {dim} in this range.")

    st.subheader("Idle cost and utilisation per replica")
    idle = ui.fetch(lambda: ctx.metering.idle("replica", window, "total"), "idle cost")
    if idle is not None:
        ui.table(idle_frame(idle), "idle-by-replica", "No replica windows in this range.")

    st.subheader("Self-hosted vs managed APIs, same traffic")
    bvb = ui.fetch(lambda: ctx.metering.buy_vs_build(window), "buy vs build")
    if bvb is not None:
        frame = buy_vs_build_frame(bvb)
        ui.table(frame, "buy-vs-build", "No self-hosted traffic in this range.")
        prices = bvb.get("managed_prices", {})
        if prices:
            st.caption(
                "Managed list prices per million tokens (input / output): "
                + "; ".join(
                    f"{name} ${p['input_per_mtok']:g} / ${p['output_per_mtok']:g} ({p['as_of']})"
                    for name, p in sorted(prices.items())
                )
            )

    st.subheader("Cache savings")
    if savings is not None:
        ui.table(cache_frame(savings), "cache-savings", "No cache hits in this range.")


ctx = ui.context()
if ctx is not None:
    st.title("Costs")
    ui.live(ctx, render)
