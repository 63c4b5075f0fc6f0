"""Request lookup: a request id → its latency, tokens and cost breakdown per window."""

from __future__ import annotations

import streamlit as st

from infermeter.dashboards import ui
from infermeter.dashboards.frames.lookup import request_summary, request_windows


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:,.3f} s"


def render(ctx: ui.Context) -> None:
    default = st.query_params.get("request_id", "")
    request_id = st.text_input("Request id", value=default, key="request_id").strip()
    if not request_id:
        st.info("Enter a request id (the X-Infermeter-Request-Id of a response).")
        return
    answer = ui.fetch(lambda: (ctx.metering.request(request_id),), "the request")
    if answer is None:
        return
    found = answer[0]
    if found is None:
        st.info(f"Metering has no request {request_id!r} (yet).")
        return
    s = request_summary(found)
    st.markdown(
        f"**{s['request_id']}** — tenant `{s['tenant']}`, model `{s['model']}`, "
        f"replica `{s['replica']}`, status `{s['status']}`"
    )
    cols = st.columns(5)
    cols[0].metric("Cost", ui.usd(s["cost_usd"], 6))
    cols[1].metric("Time to first token", _seconds(s["ttft_s"]))
    cols[2].metric("End-to-end", _seconds(s["e2e_s"]))
    cols[3].metric("Prompt tokens", f"{s['prompt_tokens']:,}")
    cols[4].metric("Completion tokens", f"{s['completion_tokens']:,}")
    if not s["allocated"]:
        st.info("Not allocated yet: metering prices requests once their windows close.")
    st.caption("Cost per allocation window")
    ui.table(request_windows(found), "request-windows", "No allocation windows yet.")
    with st.expander("Usage record"):
        st.json(found.get("record", {}))


ctx = ui.context()
if ctx is not None:
    st.title("Request lookup")
    ui.guarded(ctx, render)
