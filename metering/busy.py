"""Engine busy time as the union of request intervals ("islands"), vectorised with numpy.

Input: request intervals ``[x0, f)`` (integer microseconds) with a replica index ``rep``,
sorted by ``(rep, x0)``. Output: the maximal non-overlapping intervals per replica. One pass:
a running maximum of end times (replicas kept apart by offsetting each replica's times past
the previous one's) marks where a new island starts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def islands(rep: np.ndarray, x0: np.ndarray, f: np.ndarray) -> pa.Table:
    """Merge overlapping intervals per replica; returns a table ``(rep, a, b)``."""
    n = len(x0)
    if n == 0:
        empty = pa.array([], pa.int64())
        return pa.table({"rep": empty, "a": empty, "b": empty})
    rep = rep.astype(np.int64)
    base = int(x0.min())
    span = int(f.max()) - base + 1
    offset = rep * span
    xs = x0.astype(np.int64) - base + offset
    fs = f.astype(np.int64) - base + offset
    running = np.maximum.accumulate(fs)
    starts = np.empty(n, dtype=bool)
    starts[0] = True
    starts[1:] = xs[1:] > running[:-1]
    idx = np.flatnonzero(starts)
    a = x0[idx].astype(np.int64)
    b = np.maximum.reduceat(f.astype(np.int64), idx)
    return pa.table({"rep": rep[idx], "a": a, "b": b})


def busy_per_window(
    rep: np.ndarray, a: np.ndarray, b: np.ndarray, window_us: int, w_since: int, w_until: int
) -> pa.Table:
    """Busy microseconds per ``(rep, w)`` from islands, clipped to windows
    ``[w_since, w_until)``; islands spanning windows are split at window edges."""
    lo = np.maximum(a, w_since * window_us)
    hi = np.minimum(b, w_until * window_us)
    keep = hi > lo
    rep, lo, hi = rep[keep].astype(np.int64), lo[keep], hi[keep]
    wa = lo // window_us
    wb = (hi - 1) // window_us
    spans = wb - wa + 1
    rows = np.repeat(np.arange(len(lo)), spans)
    first = np.repeat(np.cumsum(spans) - spans, spans)
    w = wa[rows] + (np.arange(len(rows)) - first)
    start = np.maximum(lo[rows], w * window_us)
    end = np.minimum(hi[rows], (w + 1) * window_us)
    return pa.table({"rep": rep[rows], "w": w, "busy_us": end - start})
