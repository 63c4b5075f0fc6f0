"""The Fleet page's frames: latency percentiles and token rates per bucket (and per pool or
replica), per-replica load, GPU series per device or MIG slice, and their range totals.

Rates are over the part of each bucket inside the page's range (:data:`~.base.Clip`): the
range's first and last buckets are partial, and metering divides by the whole bucket."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from infermeter.dashboards.frames.base import Clip, table, utc

GIB = float(1 << 30)


LATENCY_COLUMNS = (
    "bucket", "bucket_s", "requests", "requests_per_s", "errors", "client_aborts",
    "prompt_tokens_per_s", "output_tokens_per_s",
    "ttft_p50_s", "ttft_p95_s", "ttft_p99_s", "itl_p50_s", "itl_p95_s",
    "e2e_p50_s", "e2e_p95_s", "e2e_p99_s", "queue_p50_s", "queue_p95_s",
)  # fmt: skip
BUCKET_SECONDS = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}


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
    frame = table(rows, ((by,) if by else ()) + LATENCY_COLUMNS)
    frame["bucket"] = utc(frame["bucket"])
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
    frame = table(rows, REPLICA_LOAD_COLUMNS)
    frame["bucket"] = utc(frame["bucket"])
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
    frame = table(rows, GPU_COLUMNS)
    frame["bucket"] = utc(frame["bucket"])
    return frame


def _div(value: Any, by: float) -> float | None:
    return None if value is None else round(float(value) / by, 6)


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
