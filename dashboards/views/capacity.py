"""Capacity: autoscale signals, desired vs current replicas and the signal that drives it;
right-sizing advice (MIG profile, quantization) from measured load."""

from __future__ import annotations

from functools import partial
from typing import Any

import pandas as pd
import streamlit as st

from infermeter.dashboards import rightsizing, ui
from infermeter.dashboards.frames.capacity import autoscale_frames

QUANTS = ("bf16", "fp16", "fp8", "awq-int4", "gptq-int4")


def _autoscale(ctx: ui.Context) -> None:
    st.subheader("Autoscale: desired vs current replicas")
    pools = ui.fetch(ctx.throttle.autoscale, "autoscale signals")
    if pools is None:
        return
    summary, signals = autoscale_frames(pools)
    if summary.empty:
        st.info("No pool has reported engine signals to throttle yet.")
        return
    cols = st.columns(min(len(summary), 4))
    for i, row in enumerate(summary.to_dict("records")):
        cols[i % len(cols)].metric(
            f"{row['pool']} (driven by {row['driver'] or 'none'})",
            f"{row['desired_replicas']} desired",
            delta=f"{row['change']:+d} vs {row['current_replicas']} now",
            delta_color="off" if row["change"] == 0 else "normal",
        )
    ui.table(summary, "autoscale", "")
    st.caption("Each signal's own answer (HPA rule ceil(current × observed / target)):")
    ui.table(
        signals,
        "autoscale-signals",
        "No fresh engine signals for these pools (collectors push them to throttle every few "
        "seconds; stale ones are dropped).",
    )


def _rightsizing(ctx: ui.Context) -> None:
    st.subheader("Right-sizing advice")
    window = ctx.window()
    left, right = st.columns(2)
    quant = left.selectbox("Weights the replicas run now", QUANTS, key="quant")
    headroom = right.slider("Peak load allowed on a profile (%)", 30, 95, 70, 5, key="headroom")
    by_model = ui.fetch(lambda: ctx.metering.cost("model", window, "total"), "models")
    idle = ui.fetch(lambda: ctx.metering.idle("replica", window, "total"), "idle cost")
    gpu = ui.fetch(lambda: ctx.metering.gpu(window, "total"), "GPU telemetry")
    if by_model is None or idle is None or gpu is None:
        return
    models = sorted({r["model"] for r in by_model.get("rows", []) if r.get("model")})
    hourly: dict[str, dict[str, Any]] = {}
    for model in models:
        got = ui.fetch(
            partial(ctx.metering.cost, "replica", window, "hour", model=model),
            f"load of {model}",
        )
        if got is not None:
            hourly[model] = got
    days = max(window.seconds / 86400.0, 1 / 24)
    loads = rightsizing.loads_from_reports(idle, gpu, hourly, days, quant)
    if not loads:
        st.info(
            "Not enough data for advice: needs allocated usage per replica and GPU samples "
            "that name the replica, in this range."
        )
        return
    advice = rightsizing.advise_all(loads, headroom / 100.0)
    saving = sum(a.saving_usd_per_day for a in advice)
    st.metric("Possible saving", f"{ui.usd(saving)} / day", help="at the measured cost")
    for a in advice:
        if a.kind in ("right_size", "quantize", "over_capacity"):
            st.markdown(f"**{a.replica}** — {a.message}")
    ui.table(pd.DataFrame([a.row() for a in advice]), "rightsizing", "")
    st.caption("What quantizing each model would save at its measured peak load:")
    rows = [row for x in loads for row in rightsizing.quantization_savings(x, headroom / 100.0)]
    ui.table(pd.DataFrame(rows), "quantization", "No model with a performance profile.")
    st.caption(
        "Capacity comes from the simulator's performance model (published GPU and model "
        "data sheets); prices as the share of the GPU a MIG profile holds."
    )


def render(ctx: ui.Context) -> None:
    _autoscale(ctx)
    _rightsizing(ctx)


ctx = ui.context()
if ctx is not None:
    st.title("Capacity")
    ui.live(ctx, render)
