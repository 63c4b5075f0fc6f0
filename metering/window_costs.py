"""One allocation run's arithmetic, Arrow in and Arrow out: the requests and the replicas'
capacity per window (read by :mod:`infermeter.metering.allocation`) become the priced
request-windows and the replica-window totals that it aggregates and writes back.

Steps (docs/metering.md "Allocation"): requests are cut into request-windows
(:func:`infermeter.metering.window_split.expand`), each replica's busy time per window is the union
of its request intervals (:mod:`infermeter.metering.busy`), the calibration is fitted per model
from those (:mod:`infermeter.metering.calibration`), and each priced replica-window's busy cost is
split exactly over its requests by work (:func:`infermeter.metering.window_split.split`). Request
dimensions travel as integer codes (``names`` maps them back), so aggregation groups integers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infermeter.metering import busy, occupancy, window_split
from infermeter.metering.calibration import Calibration, Sums
from infermeter.metering.context_weights import ContextWeights

Chooser = Callable[[str, Sums | None], Calibration]
ContextOf = Callable[[str], ContextWeights]
HOUR_US = 3_600_000_000
DIMENSIONS = ("tenant", "feature", "api_key_id", "pool")
# the capacity columns a replica-window row carries through unchanged
CAPACITY_COLUMNS = (
    "gpu",
    "pricing",
    "gpu_equiv",
    "provisioned_s",
    "energy_j",
    "capacity_usd",
    "energy_usd",
    "cost_micro",
)
CHUNK_REQUESTS = 500_000  # requests per part: whole replicas, arrays that stay in cache


@dataclass(slots=True)
class WindowCosts:
    """The outputs of one run over windows ``[w_since, w_until)``."""

    rows: pa.Table  # one row per priced request-window (codes, costs, tokens)
    names: pa.Table  # (dim, code, name) for the code columns of ``rows``
    replicas: pa.Table  # one row per replica-window with capacity
    calibrations: list[Calibration] = field(default_factory=list)
    unpriced_requests: int = 0
    context: dict[str, ContextWeights] = field(default_factory=dict)  # per model


def _codes(column: pa.ChunkedArray, sort: bool = False) -> tuple[np.ndarray, list[str]]:
    encoded = pc.dictionary_encode(column.combine_chunks())
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names = [str(v) for v in encoded.dictionary.to_pylist()]
    if not sort or not names:
        return codes, names
    order = sorted(range(len(names)), key=names.__getitem__)
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    return rank[codes], [names[i] for i in order]


def _ints(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy().astype(np.int64)


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy().astype(np.float64)


def _sum_by_key(keys: np.ndarray, at: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum of ``values`` (keyed ``at``) into the positions of the sorted ``keys``."""
    pos = window_split.lookup(keys, at)
    hit = pos >= 0
    return np.bincount(pos[hit], weights=values[hit], minlength=len(keys))[: len(keys)]


def _busy_per_window(
    req: window_split.Requests, order: np.ndarray, window_us: int, w_since: int, w_until: int
) -> tuple[np.ndarray, np.ndarray]:
    """(group key, busy microseconds) of every busy replica-window."""
    live = order[req.f[order] > req.x0[order]]
    merged = busy.islands(req.rep[live], req.x0[live], req.f[live])
    per_window = busy.busy_per_window(
        merged.column("rep").to_numpy(),
        merged.column("a").to_numpy(),
        merged.column("b").to_numpy(),
        window_us,
        w_since,
        w_until,
    )
    key = per_window.column("rep").to_numpy() * (w_until - w_since)
    key = key + per_window.column("w").to_numpy() - w_since
    return key, per_window.column("busy_us").to_numpy().astype(np.float64)


def compute(
    requests: pa.Table,
    profiles: pa.Table,
    capacity: pa.Table,
    *,
    window_us: int,
    w_since: int,
    w_until: int,
    choose: Chooser,
    context: ContextOf,
    chunk_requests: int = CHUNK_REQUESTS,
) -> WindowCosts:
    """Allocate the capacity rows' cost over the requests (columns: see ``allocate.sql``
    statements ``requests``, ``profile_rows`` and ``capacity_rows``)."""
    n_windows = w_until - w_since
    profile = _ints(requests, "profile")
    prof_rep, prof_rep_names = _codes(profiles.column("replica"))
    cap_rep, cap_rep_names = _codes(capacity.column("replica"))
    replicas = sorted(set(prof_rep_names) | set(cap_rep_names))
    index = {name: i for i, name in enumerate(replicas)}
    prof_rep = np.array([index[n] for n in prof_rep_names], dtype=np.int64)[prof_rep]
    cap_rep = np.array([index[n] for n in cap_rep_names], dtype=np.int64)[cap_rep]
    prof_model, models = _codes(profiles.column("model"), sort=True)
    model = prof_model[profile]
    weights = {name: context(name) for name in models}
    attention = np.array([weights[m].attention for m in models] or [0.0])[model]
    kv = np.array([weights[m].kv for m in models] or [0.0])[model]
    prefill, decode = _floats(requests, "prefill"), _floats(requests, "decode")
    prompt = _floats(requests, "prompt_tokens")
    cached = _floats(requests, "cached_prompt_tokens")
    req = window_split.Requests(
        rep=prof_rep[profile],
        model=model,
        prefill=prefill,
        decode=decode,
        x0=_ints(requests, "x0"),
        p1=_ints(requests, "p1"),
        d0=_ints(requests, "d0"),
        f=_ints(requests, "f"),
        # the average context of a prefill token and of a decode token (docs/metering.md);
        # None where no model has weights (every token alike, and the cheaper split)
        p_work=1.0 + attention * (cached + prefill / 2) if attention.any() else None,
        d_kv=kv * (prompt + decode / 2) if kv.any() else None,
    )
    tie = requests.column("h").to_numpy().view(np.int64)
    order = window_split.replica_order(req.rep, req.x0, tie)

    # capacity per replica-window, in key order
    cap_key = cap_rep * n_windows + _ints(capacity, "w") - w_since
    cap_order = np.argsort(cap_key, kind="stable")
    cap_key = cap_key[cap_order]
    cost = _ints(capacity, "cost_micro")[cap_order]
    prov = _floats(capacity, "provisioned_s")[cap_order]
    gpu_equiv = _floats(capacity, "gpu_equiv")[cap_order]
    energy = _floats(capacity, "energy_j")[cap_order]
    priced = capacity.column("priced").to_numpy(zero_copy_only=False)[cap_order].astype(bool)

    # pass 1, a few replicas at a time: request-windows, busy time, calibration sums
    parts = []
    cap_busy = np.zeros(len(cap_key))
    points = []
    for lo, hi in _chunks(req.rep[order], chunk_requests) or [(0, 0)]:
        rw = window_split.expand(req, order[lo:hi], window_us, w_since, w_until)
        busy_key, busy_us = _busy_per_window(req, order[lo:hi], window_us, w_since, w_until)
        cap_busy += _sum_by_key(cap_key, busy_key, busy_us)
        group_busy = _sum_by_key(rw.group_key, busy_key, busy_us)
        points.append(window_split.calibration_points(rw, req.model, group_busy))
        parts.append(rw)
    # summed over all parts at once: the same floating-point sums as in one piece
    pm, pp, pd, pb = (np.concatenate([pt[i] for pt in points]) for i in range(4))
    sums = window_split.calibration_sums(pm, pp, pd, pb, len(models))
    # the fit prices tokens for the rates report; the split below does not use it
    calibrations = [choose(name, sums[i]) for i, name in enumerate(models)]

    # idle = the part of a window's cost not busy; the rest is split over its requests
    busy_s = np.minimum(cap_busy / 1e6, prov)
    safe_prov = np.where(prov > 0, prov, 1.0)
    idle = np.where(prov > 0, np.rint(cost * (prov - busy_s) / safe_prov), cost)
    priced_total = np.append(np.where(priced, cost - idle.astype(np.int64), -1), -1)

    # pass 2: the exact split, part by part
    splits = [_split(rw, req, window_us, cap_key, priced_total) for rw in parts]
    unpriced_rows = [rw.row[~sp.keep] for rw, sp in zip(parts, splits, strict=True)]
    unpriced = len(np.unique(np.concatenate(unpriced_rows))) if unpriced_rows else 0
    totals = np.zeros((4, len(cap_key)))
    for rw, sp in zip(parts, splits, strict=True):
        for i, values in enumerate((sp.cost, rw.p_tok[sp.keep], rw.d_tok[sp.keep], None)):
            totals[i] += np.bincount(sp.cap, weights=values, minlength=len(cap_key))
    allocated = np.rint(totals[0]).astype(np.int64)
    replicas_out = _replica_table(
        capacity, cap_order, cap_key, n_windows, w_since, replicas, models, parts, req.model
    )
    for name, values in (
        ("busy_s", busy_s),
        ("allocated_micro", allocated),
        ("prefill_tokens", totals[1]),
        ("decode_tokens", totals[2]),
        ("requests", totals[3].astype(np.int32)),
    ):
        replicas_out = replicas_out.append_column(name, pa.array(values))

    # idle of each replica-hour per micro-dollar allocated in it, for the idle shares
    cap_hour = (cap_key % n_windows + w_since) * window_us // HOUR_US
    _, hour_of_cap = np.unique((cap_key // n_windows) * (1 << 32) + cap_hour, return_inverse=True)
    idle_h = np.bincount(hour_of_cap, weights=(cost - allocated).astype(np.float64))
    alloc_h = np.bincount(hour_of_cap, weights=allocated.astype(np.float64))
    ratio = np.where(alloc_h > 0, idle_h / np.where(alloc_h > 0, alloc_h, 1), 0.0)

    codes = {dim: _codes(profiles.column(dim)) for dim in DIMENSIONS}
    tokens = {
        name: _ints(requests, name)
        for name in ("prompt_tokens", "cached_prompt_tokens", "completion_tokens")
    }
    tables = []
    for rw, sp in zip(parts, splits, strict=True):
        rows = rw.row[sp.keep]
        last = rw.is_last[sp.keep]
        busy_k = busy_s[sp.cap]
        row_profile = profile[rows]
        columns: dict[str, object] = {
            "row": rows,
            "w": rw.w[sp.keep],
            "hour": rw.w[sp.keep] * window_us // HOUR_US,
            "rep": req.rep[rows],
            "model": req.model[rows],
            **{dim: codes[dim][0][row_profile] for dim in DIMENSIONS},
            "cost_micro": sp.cost,
            "idle_share": sp.cost * ratio[hour_of_cap[sp.cap]],
            "work": sp.work,
            "prefill_tokens": rw.p_tok[sp.keep],
            "decode_tokens": rw.d_tok[sp.keep],
            "gpu_s": sp.share * gpu_equiv[sp.cap] * busy_k,
            "energy_j": sp.share * energy[sp.cap] * busy_k / safe_prov[sp.cap],
            "requests": last.astype(np.int32),
        }
        for name, values in tokens.items():
            columns[name] = np.where(last, values[rows], 0)
        tables.append(pa.table(columns))
    all_names = {"replica": replicas, "model": models} | {d: codes[d][1] for d in DIMENSIONS}
    names = pa.table(
        {
            "dim": [d for d, values in all_names.items() for _ in values],
            "code": [i for values in all_names.values() for i in range(len(values))],
            "name": [v for values in all_names.values() for v in values],
        }
    )
    rows_out = pa.concat_tables(tables)
    return WindowCosts(rows_out, names, replicas_out, calibrations, unpriced, weights)


@dataclass(slots=True)
class _Split:
    """One part's priced request-windows: which rows, their capacity row, cost and work."""

    keep: np.ndarray
    cap: np.ndarray
    cost: np.ndarray
    work: np.ndarray
    share: np.ndarray


def _split(
    rw: window_split.RequestWindows,
    req: window_split.Requests,
    window_us: int,
    cap_key: np.ndarray,
    priced_total: np.ndarray,
) -> _Split:
    """Split each priced group's busy cost (``priced_total`` per capacity row, -1 unpriced,
    last entry for groups without a capacity row) over its rows by the engine time each
    occupied (:mod:`infermeter.metering.occupancy`)."""
    work = occupancy.occupancy_us(rw, req, window_us) / 1e6
    g_cap = window_split.lookup(cap_key, rw.group_key)
    g_cap = np.where(g_cap >= 0, g_cap, len(cap_key))
    total = priced_total[g_cap]
    q = window_split.weights(rw, work)
    cost = window_split.split(rw, q, total)
    g = rw.group_of_row()
    keep = (total >= 0)[g]
    share = q / window_split.group_sums(rw, q)[g]
    return _Split(keep, g_cap[g][keep], cost[keep], work[keep], share[keep])


def _chunks(rep_sorted: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Slices of requests sorted by replica: whole replicas, about ``size`` requests each."""
    if len(rep_sorted) == 0:
        return []
    edges = [*np.flatnonzero(rep_sorted[1:] != rep_sorted[:-1]) + 1, len(rep_sorted)]
    out, start = [], 0
    for edge in edges:
        if edge - start >= size or edge == len(rep_sorted):
            out.append((start, int(edge)))
            start = int(edge)
    return out


def _replica_table(
    capacity: pa.Table,
    cap_order: np.ndarray,
    cap_key: np.ndarray,
    n_windows: int,
    w_since: int,
    replicas: list[str],
    models: list[str],
    parts: list[window_split.RequestWindows],
    model: np.ndarray,
) -> pa.Table:
    """Capacity columns in key order; a replica's model is its configured one, else the
    smallest model name seen on it."""
    none = np.iinfo(np.int64).max
    smallest = np.full(len(replicas), none, dtype=np.int64)
    for rw in parts:
        if len(rw.starts):
            lowest = np.minimum.reduceat(model[rw.row], rw.starts)
            np.minimum.at(smallest, rw.group_key // n_windows, lowest)
    seen = np.array([models[i] if i != none else "" for i in smallest] + [""], dtype=object)
    rep = cap_key // n_windows
    taken = pa.array(cap_order)
    configured = capacity.column("model").take(taken).to_numpy(zero_copy_only=False)
    return pa.table(
        {
            "replica": pa.array(np.array([*replicas, ""], dtype=object)[rep], pa.string()),
            "w": cap_key % n_windows + w_since,
            "pool": capacity.column("pool").take(taken),
            "model": pa.array(np.where(configured != "", configured, seen[rep]), pa.string()),
            **{name: capacity.column(name).take(taken) for name in CAPACITY_COLUMNS},
        }
    )
