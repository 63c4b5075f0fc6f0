"""One allocation run's arithmetic, Arrow in and Arrow out: the requests and the replicas'
capacity per window (read by :mod:`metering.allocation`) become the priced request-windows
and the replica-window totals that it aggregates and writes back.

Steps (docs/metering.md "Allocation"): requests are cut into request-windows
(:func:`metering.window_split.expand`), each replica's busy time per window is the union of
its request intervals (:mod:`metering.busy`), the calibration is fitted per model from those
(:mod:`metering.calibration`), and each priced replica-window's busy cost is split exactly
over its requests by work (:func:`metering.window_split.split`). Request dimensions travel
as integer codes (``names`` maps them back), so aggregation groups integers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from metering import busy, window_split
from metering.calibration import Calibration, Sums

Chooser = Callable[[str, Sums | None], Calibration]
HOUR_US = 3_600_000_000
DIMENSIONS = ("tenant", "feature", "api_key_id", "pool")


@dataclass(slots=True)
class WindowCosts:
    """The outputs of one run over windows ``[w_since, w_until)``."""

    rows: pa.Table  # one row per priced request-window (codes, costs, tokens)
    names: pa.Table  # (dim, code, name) for the code columns of ``rows``
    replicas: pa.Table  # one row per replica-window with capacity
    calibrations: list[Calibration] = field(default_factory=list)
    unpriced_requests: int = 0


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
    req = window_split.Requests(
        rep=prof_rep[profile],
        model=prof_model[profile],
        prefill=_floats(requests, "prefill"),
        decode=_floats(requests, "decode"),
        x0=_ints(requests, "x0"),
        p1=_ints(requests, "p1"),
        d0=_ints(requests, "d0"),
        f=_ints(requests, "f"),
    )
    tie = requests.column("h").to_numpy().view(np.int64)
    order = window_split.replica_order(req.rep, req.x0, tie)
    rw = window_split.expand(req, order, window_us, w_since, w_until)
    busy_key, busy_us = _busy_per_window(req, order, window_us, w_since, w_until)

    # calibration per model, then each request-window's work
    group_busy = _sum_by_key(rw.group_key, busy_key, busy_us)
    sums = window_split.calibration_sums(rw, req.model, group_busy, len(models))
    calibrations = [choose(name, sums[i]) for i, name in enumerate(models)]
    a = np.array([c.prefill_s_per_token for c in calibrations] or [0.0])
    b = np.array([c.decode_s_per_token for c in calibrations] or [0.0])
    m = req.model[rw.row]
    work = rw.p_tok * a[m] + rw.d_tok * b[m]

    # capacity per replica-window, in key order; idle = the part of the cost not busy
    cap_key = cap_rep * n_windows + _ints(capacity, "w") - w_since
    cap_order = np.argsort(cap_key, kind="stable")
    cap_key = cap_key[cap_order]
    cost = _ints(capacity, "cost_micro")[cap_order]
    prov = _floats(capacity, "provisioned_s")[cap_order]
    gpu_equiv = _floats(capacity, "gpu_equiv")[cap_order]
    energy = _floats(capacity, "energy_j")[cap_order]
    priced = capacity.column("priced").to_numpy(zero_copy_only=False)[cap_order].astype(bool)
    busy_s = np.minimum(_sum_by_key(cap_key, busy_key, busy_us) / 1e6, prov)
    safe_prov = np.where(prov > 0, prov, 1.0)
    idle = np.where(prov > 0, np.rint(cost * (prov - busy_s) / safe_prov), cost)
    alloc_total = cost - idle.astype(np.int64)

    # the exact split of each priced group's busy cost over its rows
    g_cap = window_split.lookup(cap_key, rw.group_key)
    g_cap = np.where(g_cap >= 0, g_cap, len(cap_key))  # len(cap_key): no capacity row
    g_priced = np.append(priced, False)[g_cap]
    total = np.where(g_priced, np.append(alloc_total, -1)[g_cap], -1)
    q = window_split.weights(rw, work)
    row_cost = window_split.split(rw, q, total)
    g = rw.group_of_row()
    share = q / window_split.group_sums(rw, q)[g]
    row_cap = g_cap[g]
    keep = g_priced[g]
    unpriced = len(np.unique(rw.row[~keep]))

    kept_cap = row_cap[keep]
    allocated = np.rint(
        np.bincount(kept_cap, weights=row_cost[keep], minlength=len(cap_key))
    ).astype(np.int64)
    replicas_out = _replica_table(
        capacity, cap_order, cap_key, n_windows, w_since, replicas, models, rw, m
    )
    replicas_out = replicas_out.append_column("busy_s", pa.array(busy_s))
    replicas_out = replicas_out.append_column("allocated_micro", pa.array(allocated))
    for name, values in (("prefill_tokens", rw.p_tok), ("decode_tokens", rw.d_tok)):
        column = np.bincount(kept_cap, weights=values[keep], minlength=len(cap_key))
        replicas_out = replicas_out.append_column(name, pa.array(column))
    n_rows = np.bincount(kept_cap, minlength=len(cap_key)).astype(np.int32)
    replicas_out = replicas_out.append_column("requests", pa.array(n_rows))

    # idle of each replica-hour per micro-dollar allocated in it, for the idle shares
    cap_hour = (cap_key % n_windows + w_since) * window_us // HOUR_US
    _, hour_of_cap = np.unique((cap_key // n_windows) * (1 << 32) + cap_hour, return_inverse=True)
    idle_h = np.bincount(hour_of_cap, weights=(cost - allocated).astype(np.float64))
    alloc_h = np.bincount(hour_of_cap, weights=allocated.astype(np.float64))
    ratio = np.where(alloc_h > 0, idle_h / np.where(alloc_h > 0, alloc_h, 1), 0.0)

    rows = rw.row[keep]
    last = rw.is_last[keep]
    busy_k = busy_s[kept_cap]
    share_k = share[keep]
    codes = {dim: _codes(profiles.column(dim)) for dim in DIMENSIONS}
    row_profile = profile[rows]
    columns: dict[str, object] = {
        "row": rows,
        "w": rw.w[keep],
        "hour": rw.w[keep] * window_us // HOUR_US,
        "rep": req.rep[rows],
        "model": req.model[rows],
        **{dim: codes[dim][0][row_profile] for dim in DIMENSIONS},
        "cost_micro": row_cost[keep],
        "idle_share": row_cost[keep] * ratio[hour_of_cap[kept_cap]],
        "work": work[keep],
        "prefill_tokens": rw.p_tok[keep],
        "decode_tokens": rw.d_tok[keep],
        "gpu_s": share_k * gpu_equiv[kept_cap] * busy_k,
        "energy_j": share_k * energy[kept_cap] * busy_k / safe_prov[kept_cap],
        "requests": last.astype(np.int32),
    }
    for name in ("prompt_tokens", "cached_prompt_tokens", "completion_tokens"):
        columns[name] = np.where(last, _ints(requests, name)[rows], 0)
    all_names = {"replica": replicas, "model": models} | {d: codes[d][1] for d in DIMENSIONS}
    names = pa.table(
        {
            "dim": [d for d, values in all_names.items() for _ in values],
            "code": [i for values in all_names.values() for i in range(len(values))],
            "name": [v for values in all_names.values() for v in values],
        }
    )
    return WindowCosts(pa.table(columns), names, replicas_out, calibrations, unpriced)


def _replica_table(
    capacity: pa.Table,
    cap_order: np.ndarray,
    cap_key: np.ndarray,
    n_windows: int,
    w_since: int,
    replicas: list[str],
    models: list[str],
    rw: window_split.RequestWindows,
    model: np.ndarray,
) -> pa.Table:
    """Capacity columns in key order; a replica's model is its configured one, else the
    smallest model name seen on it."""
    none = np.iinfo(np.int64).max
    smallest = np.full(len(replicas), none, dtype=np.int64)
    if len(rw.starts):
        np.minimum.at(smallest, rw.group_key // n_windows, np.minimum.reduceat(model, rw.starts))
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
            **{
                name: capacity.column(name).take(taken)
                for name in (
                    "gpu",
                    "pricing",
                    "gpu_equiv",
                    "provisioned_s",
                    "energy_j",
                    "capacity_usd",
                    "energy_usd",
                    "cost_micro",
                )
            },
        }
    )
