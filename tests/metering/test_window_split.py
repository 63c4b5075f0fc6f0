"""The allocation kernel: exact integer split, window expansion and deterministic order."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.metering import window_split

W = 60_000_000


def grouped_windows(sizes: list[int]) -> window_split.RequestWindows:
    """Request-windows in groups of the given sizes (only the grouping matters here)."""
    n = int(sum(sizes))
    keys = np.repeat(np.arange(len(sizes)), sizes)
    return window_split.RequestWindows(
        row=np.arange(n),
        key=keys,
        w=keys,
        ov_us=np.ones(n, dtype=np.int64),
        p_tok=np.zeros(n),
        d_tok=np.zeros(n),
        is_last=np.ones(n, dtype=bool),
        starts=np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64),
        group_key=np.arange(len(sizes)),
    )


@settings(max_examples=200, deadline=None)
@given(
    groups=st.lists(
        st.tuples(
            st.integers(-1, 10**11),  # micro-dollars to split (-1: unpriced)
            st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=30),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_split_is_exact_non_negative_and_within_one_micro_dollar(
    groups: list[tuple[int, list[float]]],
) -> None:
    rw = grouped_windows([len(work) for _, work in groups])
    keys = rw.key
    work = np.concatenate([np.array(w) for _, w in groups])
    total = np.array([t for t, _ in groups], dtype=np.int64)
    q = window_split.weights(rw, work)
    cost = window_split.split(rw, q, total)
    assert (cost >= 0).all()
    for g, (t, _) in enumerate(groups):
        part = cost[keys == g]
        if t < 0:
            assert (part == 0).all()
            continue
        assert int(part.sum()) == t
        exact = t * (q[keys == g] / q[keys == g].sum())
        assert np.abs(part - exact).max() < 1.0 + 1e-6 * max(t, 1)


def test_group_without_work_splits_by_overlap_then_evenly() -> None:
    rw = grouped_windows([3])
    rw.ov_us[:] = [1, 3, 0]
    q = window_split.weights(rw, np.zeros(3))
    assert window_split.split(rw, q, np.array([400])).tolist() == [100, 300, 0]
    rw.ov_us[:] = 0
    q = window_split.weights(rw, np.zeros(3))
    assert sorted(window_split.split(rw, q, np.array([10])).tolist()) == [3, 3, 4]


def test_expand_prorates_tokens_by_phase_overlap() -> None:
    # one request: prefill [30 s, 90 s) spans two windows, decode [90 s, 150 s) spans two
    req = window_split.Requests(
        rep=np.array([0]),
        model=np.array([0]),
        prefill=np.array([600.0]),
        decode=np.array([60.0]),
        x0=np.array([30_000_000]),
        p1=np.array([90_000_000]),
        d0=np.array([90_000_000]),
        f=np.array([150_000_000]),
    )
    rw = window_split.expand(req, np.array([0]), W, 0, 10)
    assert rw.w.tolist() == [0, 1, 2]
    assert rw.p_tok.tolist() == [300.0, 300.0, 0.0]
    assert rw.d_tok.tolist() == [0.0, 30.0, 30.0]
    assert rw.ov_us.tolist() == [30_000_000, 60_000_000, 30_000_000]
    assert rw.is_last.tolist() == [False, False, True]
    clipped = window_split.expand(req, np.array([0]), W, 1, 2)  # only window 1 in range
    assert clipped.w.tolist() == [1] and clipped.p_tok.tolist() == [300.0]


@given(st.permutations(list(range(12))))
def test_replica_order_breaks_ties_by_hash_not_input_order(perm: list[int]) -> None:
    rep = np.array([0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1])
    x0 = np.array([5, 5, 5, 7, 7, 2, 1, 9, 7, 3, 5, 2])
    tie = np.arange(12, dtype=np.int64) * 7919 % 13
    reference = window_split.replica_order(rep, x0, tie)
    p = np.array(perm)
    shuffled = window_split.replica_order(rep[p], x0[p], tie[p])
    assert p[shuffled].tolist() == reference.tolist()
