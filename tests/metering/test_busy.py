"""Busy time (union of intervals) against a brute-force reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.metering.busy import busy_per_window, islands

intervals = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 500), st.integers(1, 200)), max_size=40
)


@settings(max_examples=200, deadline=None)
@given(intervals, st.sampled_from([7, 50, 100]), st.integers(0, 3), st.integers(4, 12))
def test_busy_per_window_matches_brute_force(
    items: list[tuple[int, int, int]], window: int, w_since: int, w_until: int
) -> None:
    items = sorted((r, s, s + d) for r, s, d in items)
    rep = np.array([i[0] for i in items], dtype=np.int64)
    x0 = np.array([i[1] for i in items], dtype=np.int64)
    f = np.array([i[2] for i in items], dtype=np.int64)
    merged = islands(rep, x0, f)
    got: dict[tuple[int, int], int] = {}
    table = busy_per_window(
        merged.column("rep").to_numpy(),
        merged.column("a").to_numpy(),
        merged.column("b").to_numpy(),
        window,
        w_since,
        w_until,
    )
    for r, w, us in zip(
        *(table.column(c).to_pylist() for c in ("rep", "w", "busy_us")), strict=True
    ):
        got[(r, w)] = got.get((r, w), 0) + us
    expected: dict[tuple[int, int], int] = {}
    for r in {i[0] for i in items}:
        covered = set()
        for rr, s, e in items:
            if rr == r:
                covered.update(range(s, e))
        for t in covered:
            w = t // window
            if w_since <= w < w_until:
                expected[(r, w)] = expected.get((r, w), 0) + 1
    assert got == expected
    # islands never overlap within a replica
    for r in set(merged.column("rep").to_pylist()):
        spans = [
            (a, b)
            for rr, a, b in zip(
                *(merged.column(c).to_pylist() for c in ("rep", "a", "b")), strict=True
            )
            if rr == r
        ]
        assert all(spans[i][1] < spans[i + 1][0] for i in range(len(spans) - 1))
