"""Fleet: throughput, latency percentiles, per-replica load, GPUs and engine signals."""

from __future__ import annotations

from functools import partial

import streamlit as st

from infermeter.dashboards import ui
from infermeter.dashboards.frames.base import pivot
from infermeter.dashboards.frames.capacity import engine_frame
from infermeter.dashboards.frames.fleet import (
    gpu_frame,
    gpu_summary,
    latency_frame,
    latency_totals,
    replica_load_frame,
)


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:,.0f} ms" if value < 1 else f"{value:,.2f} s"


def render(ctx: ui.Context) -> None:
    window = ctx.window()
    grain = ctx.series_granularity()
    st.caption(f"{window.since:%Y-%m-%d %H:%M} → {window.until:%Y-%m-%d %H:%M} UTC, per {grain}")

    st.subheader("Throughput and latency")
    report = ui.fetch(lambda: ctx.metering.latency(window, grain), "latency")
    if report is not None:
        lat = latency_frame(report, (window.since, window.until))
        totals = latency_totals(lat, window.seconds)
        cols = st.columns(5)
        cols[0].metric("Requests", f"{totals['requests']:,}")
        rps = totals["requests_per_s"]
        cols[1].metric("Requests/s", "—" if rps is None else f"{rps:,.3f}")
        tps = totals["output_tokens_per_s"]
        cols[2].metric("Output tokens/s", "—" if tps is None else f"{tps:,.1f}")
        cols[3].metric("Worst TTFT p95", _seconds(totals["ttft_p95_s_worst"]))
        cols[4].metric("Worst end-to-end p95", _seconds(totals["e2e_p95_s_worst"]))
        if lat.empty:
            st.info("No requests metered in this range yet.")
        else:
            series = lat.set_index("bucket")
            left, right = st.columns(2)
            left.caption("Tokens/s")
            left.line_chart(series[["prompt_tokens_per_s", "output_tokens_per_s"]])
            right.caption("Requests/s")
            right.line_chart(series[["requests_per_s"]])
            left, mid, right = st.columns(3)
            left.caption("Time to first token (s)")
            left.line_chart(series[["ttft_p50_s", "ttft_p95_s", "ttft_p99_s"]])
            mid.caption("Inter-token latency (s)")
            mid.line_chart(series[["itl_p50_s", "itl_p95_s"]])
            right.caption("End-to-end latency (s)")
            right.line_chart(series[["e2e_p50_s", "e2e_p95_s", "e2e_p99_s"]])
            ui.table(lat, "latency", "")

    st.subheader("Per pool and replica")
    cost_grain = ctx.cost_granularity()
    for key in ("pool", "replica"):
        by = ui.fetch(partial(ctx.metering.cost, key, window, cost_grain), f"{key} load")
        if by is None:
            continue
        # metering's cost reports start at the hour that contains since
        start = window.since.replace(minute=0, second=0, microsecond=0)
        load = replica_load_frame(by, key, (start, window.until))
        if not load.empty:
            st.caption(f"Tokens/s per {key} (per {cost_grain})")
            st.line_chart(pivot(load, "bucket", key, "tokens_per_s"))
        ui.table(load, f"{key}-load", f"No allocated usage per {key} in this range yet.")
    per = ui.fetch(lambda: ctx.metering.latency(window, grain, by="replica"), "replica latency")
    if per is not None:
        lat_by = latency_frame(per, (window.since, window.until))
        if not lat_by.empty:
            left, right = st.columns(2)
            left.caption("Time to first token p95 per replica (s)")
            left.line_chart(pivot(lat_by, "bucket", "replica", "ttft_p95_s"))
            right.caption("End-to-end latency p95 per replica (s)")
            right.line_chart(pivot(lat_by, "bucket", "replica", "e2e_p95_s"))
            ui.table(lat_by, "replica-latency", "")

    st.subheader("GPUs and MIG slices")
    gpu = ui.fetch(lambda: ctx.metering.gpu(window, grain), "GPU telemetry")
    if gpu is not None:
        g = gpu_frame(gpu)
        if g.empty:
            st.info("No GPU samples in this range (is the collector's NVML sampler running?).")
        else:
            left, mid, right = st.columns(3)
            left.caption("Utilisation (%)")
            left.line_chart(pivot(g, "bucket", "device", "util_pct"))
            mid.caption("Memory used (GiB)")
            mid.line_chart(pivot(g, "bucket", "device", "mem_used_gib"))
            right.caption("Power (W)")
            right.line_chart(pivot(g, "bucket", "device", "power_w"))
            ui.table(gpu_summary(g), "gpu-summary", "")
            with st.expander("Every GPU sample bucket"):
                ui.table(g, "gpu-series", "")

    st.subheader("Engine queue and KV cache (now)")
    samples = ui.fetch(lambda: ctx.throttle.metrics("infermeter_throttle_pool_signal"), "engine")
    if samples is not None:
        eng = engine_frame(samples)
        if eng.empty:
            ui.table(eng, "engine", "No engine signals reported to throttle yet.")
        else:
            wide = eng.pivot_table(index="pool", columns="signal", values="value").reset_index()
            ui.table(wide, "engine", "")


ctx = ui.context()
if ctx is not None:
    st.title("Fleet")
    ui.live(ctx, render)
