"""The pools as throttle sees them: its autoscale recommendations with every signal's own
answer (the Capacity page), and the per-pool mean of each engine signal (the Fleet page)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from infermeter.dashboards.client import Sample
from infermeter.dashboards.frames.base import table

AUTOSCALE_COLUMNS = (
    "pool", "current_replicas", "desired_replicas", "raw_desired_replicas", "change",
    "driver", "pressure", "saturated",
)  # fmt: skip
SIGNAL_COLUMNS = ("pool", "signal", "observed", "target", "ratio", "desired", "drives")


def autoscale_frames(pools: Iterable[Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``/v1/autoscale``: desired vs current per pool, and every signal's own answer (the
    one that drives the recommendation flagged)."""
    rows, signals = [], []
    for p in pools:
        rows.append(
            {
                "pool": p["pool"],
                "current_replicas": p["current_replicas"],
                "desired_replicas": p["desired_replicas"],
                "raw_desired_replicas": p.get("raw_desired_replicas"),
                "change": p["desired_replicas"] - p["current_replicas"],
                "driver": p.get("driver", ""),
                "pressure": bool(p.get("pressure")),
                "saturated": ", ".join(p.get("saturated") or []),
            }
        )
        for name, s in sorted((p.get("signals") or {}).items()):
            signals.append({"pool": p["pool"], "signal": name, **s,
                            "drives": name == p.get("driver")})  # fmt: skip
    return table(rows, AUTOSCALE_COLUMNS), table(signals, SIGNAL_COLUMNS)


ENGINE_COLUMNS = ("pool", "signal", "value")


def engine_frame(samples: Iterable[Sample]) -> pd.DataFrame:
    """Throttle's per-pool mean of each engine signal (queue, KV cache, tokens/s, TTFT)."""
    rows = [
        {"pool": s.labels.get("pool", ""), "signal": s.labels.get("signal", ""), "value": s.value}
        for s in samples
        if s.name == "infermeter_throttle_pool_signal"
    ]
    return table(rows, ENGINE_COLUMNS)
