"""The allocation arithmetic, vectorised with numpy: requests to request-windows, per-window
totals, calibration sums and the integer split of each replica-window's cost.

Pure functions over arrays (no storage, no SQL): :mod:`infermeter.metering.allocation` reads the
inputs from DuckDB and writes the outputs back. A *request* is an interval ``[x0, f)`` in integer
microseconds on a replica, with a prefill phase ``[x0, p1]`` and a decode phase ``[d0, f]``;
a *group* is one replica-window, keyed ``rep * n_windows + (w - w_since)``.

The split is exact in integers: each request-window gets a quantised weight ``q`` (its work
in engine microseconds; its overlap time when the window did no token work; 1 when neither),
and with ``Q`` the window's total and ``T`` the micro-dollars to split, the request at
position ``i`` receives ``floor(T * C_i / Q) - floor(T * C_(i-1) / Q)``, ``C`` the running
sum of ``q`` in the window (cumulative rounding). The parts are non-negative, each is within
one micro-dollar of its exact share ``T * q / Q``, and they sum to ``T`` exactly, whatever
the floating-point error, because ``C`` is an exact integer and the last ``C`` equals ``Q``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from infermeter.metering.calibration import Sums

I64 = np.int64


@dataclass(slots=True)
class Requests:
    """One row per request: replica and model indexes, token counts and phase bounds."""

    rep: np.ndarray
    model: np.ndarray
    prefill: np.ndarray
    decode: np.ndarray
    x0: np.ndarray
    p1: np.ndarray
    d0: np.ndarray
    f: np.ndarray
    # context weights (metering/context_weights.py): a prefill token's work, ``1 + attention
    # x context`` (None: 1), and a decode token's KV weight per batch member (None: 0)
    p_work: np.ndarray | None = None
    d_kv: np.ndarray | None = None


@dataclass(slots=True)
class RequestWindows:
    """One row per request and window it overlaps, sorted by group (replica, window)."""

    row: np.ndarray  # index into the requests
    key: np.ndarray  # group key, non-decreasing
    w: np.ndarray
    ov_us: np.ndarray
    p_tok: np.ndarray
    d_tok: np.ndarray
    is_last: np.ndarray
    starts: np.ndarray  # first position of each group
    group_key: np.ndarray  # key of each group

    def group_of_row(self) -> np.ndarray:
        """Group index of every row."""
        counts = np.diff(np.append(self.starts, len(self.key)))
        return np.repeat(np.arange(len(self.starts)), counts)


def replica_order(rep: np.ndarray, x0: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """Request positions ordered by replica, then start, then ``tie`` (a hash of the id), so
    a run and a later recomputation of a subset order tied requests the same way."""
    if len(rep) == 0:
        return np.zeros(0, dtype=I64)
    base = int(x0.min())
    span = int(x0.max()) - base + 1
    combined = rep.astype(I64) * span + (x0 - base)
    order = np.argsort(combined, kind="stable")
    ranked = combined[order]
    tied = np.flatnonzero(ranked[1:] == ranked[:-1])
    if len(tied):
        pos = np.unique(np.concatenate((tied, tied + 1)))
        sub = order[pos]
        order[pos] = sub[np.lexsort((tie[sub], combined[sub]))]
    return order


def _overlap(lo: np.ndarray, hi: np.ndarray, w_lo: np.ndarray, w_hi: np.ndarray) -> np.ndarray:
    return np.maximum(np.minimum(hi, w_hi) - np.maximum(lo, w_lo), 0)


def expand(
    req: Requests, order: np.ndarray, window_us: int, w_since: int, w_until: int
) -> RequestWindows:
    """Request-windows of the requests taken in ``order`` (by replica, then start), clipped
    to windows ``[w_since, w_until)``; tokens pro-rated by each phase's overlap."""
    x0, f = req.x0[order], req.f[order]
    w0 = x0 // window_us
    w1 = np.maximum(x0, f - 1) // window_us
    lo = np.maximum(w0, w_since)
    hi = np.minimum(w1, w_until - 1)
    spans = np.maximum(hi - lo + 1, 0)
    pos = np.repeat(np.arange(len(order)), spans)
    first = np.repeat(np.cumsum(spans) - spans, spans)
    w = lo[pos] + (np.arange(len(pos), dtype=I64) - first)
    row = order[pos]
    x0, f, p1, d0 = x0[pos], f[pos], req.p1[row], req.d0[row]
    w_lo, w_hi = w * window_us, (w + 1) * window_us
    with np.errstate(divide="ignore", invalid="ignore"):
        p_frac = np.where(
            p1 > x0,
            _overlap(x0, p1, w_lo, w_hi) / np.maximum(p1 - x0, 1),
            (x0 // window_us == w).astype(np.float64),
        )
        d_frac = np.where(
            f > d0,
            _overlap(d0, f, w_lo, w_hi) / np.maximum(f - d0, 1),
            (np.maximum(f - 1, x0) // window_us == w).astype(np.float64),
        )
    n_windows = w_until - w_since
    key = req.rep[row].astype(I64) * n_windows + (w - w_since)
    resort = np.argsort(key, kind="stable")
    key = key[resort]
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1]))) if len(key) else key
    return RequestWindows(
        row=row[resort],
        key=key,
        w=w[resort],
        ov_us=_overlap(x0, f, w_lo, w_hi)[resort],
        p_tok=(req.prefill[row] * p_frac)[resort],
        d_tok=(req.decode[row] * d_frac)[resort],
        is_last=(w1[pos] == w)[resort],
        starts=starts.astype(I64),
        group_key=key[starts] if len(key) else key,
    )


def group_sums(rw: RequestWindows, values: np.ndarray) -> np.ndarray:
    """Sum of ``values`` per group."""
    if len(rw.starts) == 0:
        return np.zeros(0, dtype=values.dtype)
    return np.add.reduceat(values, rw.starts)


def lookup(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Position of each ``wanted`` key in the sorted ``keys``, -1 where absent."""
    if len(keys) == 0:
        return np.full(len(wanted), -1, dtype=I64)
    pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[pos] == wanted, pos, -1)


def calibration_points(
    rw: RequestWindows, model: np.ndarray, busy_us: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The groups a calibration rests on (busy, one model, some tokens) as ``(model, P, D,
    busy seconds)``; ``busy_us`` per group, ``model`` per request."""
    if len(rw.starts) == 0:
        empty = np.zeros(0)
        return np.zeros(0, dtype=I64), empty, empty, empty
    m = model[rw.row]
    m_lo = np.minimum.reduceat(m, rw.starts)
    m_hi = np.maximum.reduceat(m, rw.starts)
    p = group_sums(rw, rw.p_tok)
    d = group_sums(rw, rw.d_tok)
    keep = (m_lo == m_hi) & (busy_us > 0) & ((p > 0) | (d > 0))
    return m_lo[keep], p[keep], d[keep], busy_us[keep] / 1e6


def calibration_sums(
    m: np.ndarray, p: np.ndarray, d: np.ndarray, b: np.ndarray, n_models: int
) -> list[Sums | None]:
    """Normal-equation sums per model over calibration points (see
    :func:`calibration_points`)."""

    def per_model(v: np.ndarray) -> np.ndarray:
        return np.bincount(m, weights=v, minlength=n_models)

    n = np.bincount(m, minlength=n_models)
    columns = [per_model(v) for v in (p * p, p * d, d * d, p * b, d * b, b * b, b)]
    return [
        Sums(int(n[i]), *(float(c[i]) for c in columns)) if n[i] else None for i in range(n_models)
    ]


def weights(rw: RequestWindows, work: np.ndarray) -> np.ndarray:
    """Integer split weights: work in engine microseconds; overlap time in groups without
    token work; 1 in groups with neither."""
    q = np.rint(work * 1e6).astype(I64)
    g = rw.group_of_row()
    q_sum = group_sums(rw, q)[g]
    q = np.where(q_sum > 0, q, rw.ov_us)
    q_sum = group_sums(rw, q)[g]
    return np.where(q_sum > 0, q, 1)


def split(rw: RequestWindows, q: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Split ``total`` micro-dollars per group (negative: unpriced, rows get 0) over the rows
    in proportion to the integer weights ``q``, exactly, by cumulative rounding."""
    if len(q) == 0:
        return np.zeros(0, dtype=I64)
    g = rw.group_of_row()
    run = np.cumsum(q)
    before = run[rw.starts] - q[rw.starts]
    c = run - before[g]  # exact running sum within the group
    q_sum = c[np.append(rw.starts[1:], len(q)) - 1][g]
    t = np.maximum(total, 0)[g].astype(np.float64)
    upto = np.floor(t * (c / q_sum)).astype(I64)
    prev = upto - np.floor(t * ((c - q) / q_sum)).astype(I64)
    return np.where(total[g] >= 0, prev, 0)
