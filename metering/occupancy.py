"""Engine time per request, measured from the requests' own timings under continuous batching.

A continuous-batching engine runs every scheduled sequence through the model in each step,
so at any instant the engine's time is shared by the requests it is serving. Each request
tells when it was served: its prefill phase ``[x0, p1]`` (from the end of its queueing to its
first token) and its decode phase ``[d0, f]``, and how many tokens it put through the engine in
each (uncached prompt tokens, completion tokens). Its token *rate* in a phase is those tokens
over the phase's length. At every instant the busy engine's time is split among the requests
present in proportion to their token rates (a step computes every scheduled token once, so a
token's share of a step is the same whichever request it belongs to); where the present
requests report no token work at all the instant is split equally among them. Summed over a
window, the shares equal the window's busy time (the union of the requests' intervals)
exactly up to floating-point rounding, with no fitted coefficient and no default: a window is
priced from what happened in it, from the first one on. A serial engine (one request at a
time) gives each request its own duration, which is its engine time.

Context (:mod:`infermeter.metering.context_weights`): where the model's architecture is known,
a prefill token's rate is weighted by ``1 + attention x its average context`` (its attention
FLOPs), and a decode token by ``1 + batch x kv x its average context``, ``batch`` the number of
rows decoding at that instant: a memory-bound decode step reads the weights once for the batch
and each sequence's KV cache for it alone, so a long-context sequence's part of the step is
larger than a short one's. The instant's total weight is then ``sum(rates) + batch x
sum(kv-rates)``, and a decode row's share adds ``kv-rate x`` the running sum of
``batch x dt / total``. Without known weights every token weighs the same.

Vectorised over every request-window of a part at once: each row contributes four events
(``x0``: +prefill rate, +1 present; ``p1``: -prefill rate; ``d0``: +decode rate; ``f``: -decode
rate, -1 present), clipped to its window; one sort by (window, time), integer running sums of
rates and presence (exact, so they are exactly zero between requests and at each window's
end), and a running sum of ``dt / rate`` per segment give every row's share as a difference of
two running sums.
"""

from __future__ import annotations

import numpy as np

from infermeter.metering.window_split import I64, Requests, RequestWindows

RATE_UNITS = 1e12  # rates are integers of 1e-12 tokens per microsecond (1e-6 tokens/s)


def occupancy_us(rw: RequestWindows, req: Requests, window_us: int) -> np.ndarray:
    """Engine microseconds each request-window row occupied (``rw`` sorted by group)."""
    n = len(rw.row)
    if n == 0:
        return np.zeros(0)
    r = rw.row
    w_lo = rw.w * window_us
    w_hi = w_lo + window_us
    x0, p1, d0, f = req.x0[r], req.p1[r], req.d0[r], req.f[r]
    p_work = req.p_work[r] if req.p_work is not None else 1.0
    p_rate = _rate(req.prefill[r] * p_work, p1 - x0)
    d_rate = _rate(req.decode[r], f - d0)
    d_kv = _rate(req.decode[r] * req.d_kv[r], f - d0) if req.d_kv is not None else None
    # event times within the row's window, as offsets from the window's start
    times = np.stack([x0, p1, d0, f], axis=1)
    times = np.clip(times, w_lo[:, None], w_hi[:, None]) - w_lo[:, None]
    d_rate_ev = np.stack([p_rate, -p_rate, d_rate, -d_rate], axis=1)
    d_present = np.zeros((n, 4), dtype=I64)
    d_present[:, 0], d_present[:, 3] = 1, -1
    group = np.repeat(rw.group_of_row().astype(I64), 4)
    key = group * (window_us + 1) + times.ravel()
    order = np.argsort(key, kind="stable")
    key = key[order]
    rate = np.cumsum(d_rate_ev.ravel()[order])
    present = np.cumsum(d_present.ravel()[order])
    if d_kv is not None:
        # decode rows in a step read their KV cache on top of a batch member's share of the
        # weights: weight = rate + batch x kv-rate (docs/metering.md, "Context")
        decoding = (d_rate > 0).astype(I64)
        zeros = np.zeros(n, dtype=I64)
        batch = np.cumsum(np.stack([zeros, zeros, decoding, -decoding], axis=1).ravel()[order])
        kv = np.cumsum(np.stack([zeros, zeros, d_kv, -d_kv], axis=1).ravel()[order])
        total = rate + batch * kv
    else:
        batch = None
        total = rate
    dt = np.diff(key, append=key[-1]).astype(np.float64)  # 0 across groups: nothing present
    busy = present > 0
    by_rate = busy & (total > 0)
    by_presence = busy & (total <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_rate = np.where(by_rate, dt / np.where(by_rate, total, 1), 0.0)
        per_head = np.where(by_presence, dt / np.where(by_presence, present, 1), 0.0)
    sorted_group = key // (window_us + 1)
    starts = np.flatnonzero(np.concatenate(([True], sorted_group[1:] != sorted_group[:-1])))
    cum_rate, e_rate = _prefix_sums(per_rate, starts)
    cum_head, e_head = _prefix_sums(per_head, starts)
    position = np.empty(4 * n, dtype=I64)
    position[order] = np.arange(4 * n, dtype=I64)
    pos = position.reshape(n, 4)

    def between(cum: np.ndarray, exp: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # an event's prefix sum covers the segments before it in its window
        return np.ldexp((cum[b] - cum[a]).astype(np.float64), -exp[a])

    prefill = p_rate * between(cum_rate, e_rate, pos[:, 0], pos[:, 1])
    decode = d_rate * between(cum_rate, e_rate, pos[:, 2], pos[:, 3])
    if d_kv is not None and batch is not None:
        cum_b, e_b = _prefix_sums(per_rate * batch, starts)
        decode = decode + d_kv * between(cum_b, e_b, pos[:, 2], pos[:, 3])
    heads = between(cum_head, e_head, pos[:, 0], pos[:, 3])
    return np.maximum(prefill + decode + heads, 0.0)


def _prefix_sums(values: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exclusive running sums of non-negative ``values`` restarted at each of ``starts``, as
    exact integers: each group's values are put on a fixed-point grid of its own (its total
    scaled to just under 2**61) and summed in int64, so a group's sums do not depend on what
    other groups are present (a recomputation of some windows is bit-identical to the run)
    and differences of two sums within a group are exact. Returns the sums and the binary
    exponent that scales each back to microseconds-per-rate-unit (``ldexp(sum, -exponent)``).
    """
    n = len(values)
    sizes = np.diff(np.append(starts, n))
    totals = np.add.reduceat(values, starts)
    positive = totals > 0
    exponent = np.where(
        positive, 61 - np.ceil(np.log2(np.where(positive, totals, 1.0))).astype(I64), 0
    )
    exponents = np.repeat(exponent, sizes)
    quanta = np.rint(np.ldexp(values, exponents)).astype(I64)
    with np.errstate(over="ignore"):
        running = np.cumsum(quanta) - quanta  # wraps modulo 2**64; differences stay exact
        local = running - np.repeat(running[starts], sizes)
    return local, exponents


def _rate(tokens: np.ndarray, span_us: np.ndarray) -> np.ndarray:
    """Integer token rate of a phase (0 for a phase without tokens or without duration)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(span_us > 0, tokens / np.where(span_us > 0, span_us, 1), 0.0)
    return np.rint(rate * RATE_UNITS).astype(I64)
