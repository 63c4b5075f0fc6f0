"""The Request lookup page's frames: one request's headline figures (latency, tokens, cost)
and its cost per allocation window."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from infermeter.dashboards.frames.base import table, utc

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
    frame = table(found.get("windows", []), WINDOW_COLUMNS)
    frame["window_start"] = utc(frame["window_start"])
    return frame
