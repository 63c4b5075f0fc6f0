"""Engine time per request from the requests' own timings (metering/occupancy.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.metering import busy, occupancy, window_split

WINDOW = 60_000_000  # µs


def _requests(rows: list[tuple[int, float, float, int, int, int, int]]) -> window_split.Requests:
    """rows: (replica, prefill tokens, decode tokens, x0, p1, d0, f) in µs."""
    cols = list(zip(*rows, strict=True))
    ints = [np.array(c, dtype=np.int64) for c in cols]
    return window_split.Requests(
        rep=ints[0],
        model=np.zeros(len(rows), dtype=np.int64),
        prefill=np.array(cols[1], dtype=np.float64),
        decode=np.array(cols[2], dtype=np.float64),
        x0=ints[3],
        p1=ints[4],
        d0=ints[5],
        f=ints[6],
    )


def _occupancy(req: window_split.Requests, w_until: int = 10) -> dict[tuple[int, int], float]:
    order = window_split.replica_order(req.rep, req.x0, np.arange(len(req.rep)))
    rw = window_split.expand(req, order, WINDOW, 0, w_until)
    occ = occupancy.occupancy_us(rw, req, WINDOW)
    out: dict[tuple[int, int], float] = {}
    for row, w, value in zip(rw.row, rw.w, occ, strict=True):
        out[int(row), int(w)] = out.get((int(row), int(w)), 0.0) + float(value)
    return out


def test_a_serial_engine_gives_each_request_its_own_duration() -> None:
    req = _requests([
        (0, 500, 20, 1_000_000, 1_200_000, 1_200_000, 3_000_000),
        (0, 10, 200, 3_000_000, 3_010_000, 3_010_000, 9_000_000),
        (0, 0, 0, 20_000_000, 20_000_000, 20_000_000, 20_500_000),  # an error, no tokens
    ])  # fmt: skip
    occ = _occupancy(req)
    assert occ[0, 0] == pytest.approx(2_000_000)
    assert occ[1, 0] == pytest.approx(6_000_000)
    assert occ[2, 0] == pytest.approx(500_000)


def test_concurrent_requests_share_by_token_rate() -> None:
    req = _requests([
        # a long prompt prefilled in [0, 0.1 s] while the other one decodes
        (0, 1000, 1, 0, 100_000, 100_000, 100_000),
        (0, 0, 5, 0, 0, 0, 100_000),
    ])  # fmt: skip
    occ = _occupancy(req)
    assert occ[0, 0] == pytest.approx(100_000 * 1000 / 1005, rel=1e-6)
    assert occ[1, 0] == pytest.approx(100_000 * 5 / 1005, rel=1e-6)


def test_equal_decoders_split_equally_and_windows_are_cut() -> None:
    req = _requests([
        (0, 0, 100, 50_000_000, 50_000_000, 50_000_000, 70_000_000),
        (0, 0, 100, 50_000_000, 50_000_000, 50_000_000, 70_000_000),
    ])  # fmt: skip
    occ = _occupancy(req)
    for row in (0, 1):
        assert occ[row, 0] == pytest.approx(5_000_000)
        assert occ[row, 1] == pytest.approx(5_000_000)


def test_a_long_context_decode_takes_more_of_a_memory_bound_step() -> None:
    """Two sequences decode side by side at the same rate; with context weights each one's
    part of the step is a batch member's share of the weights plus its own KV reads:
    ``(1/n + kv x context) / (1 + kv x total context)``."""
    req = _requests([
        (0, 0, 100, 0, 0, 0, 10_000_000),
        (0, 0, 100, 0, 0, 0, 10_000_000),
    ])  # fmt: skip
    kv, contexts = 1e-4, np.array([8000.0, 500.0])
    req.d_kv = kv * contexts
    occ = _occupancy(req)
    expected = (0.5 + kv * contexts) / (1 + kv * contexts.sum()) * 10_000_000
    assert occ[0, 0] == pytest.approx(expected[0], rel=1e-6)
    assert occ[1, 0] == pytest.approx(expected[1], rel=1e-6)
    assert occ[0, 0] + occ[1, 0] == pytest.approx(10_000_000, rel=1e-9)


def test_prefill_tokens_weigh_their_attention_over_the_context() -> None:
    req = _requests([
        (0, 1000, 0, 0, 100_000, 100_000, 100_000),
        (0, 1000, 0, 0, 100_000, 100_000, 100_000),
    ])  # fmt: skip
    req.p_work = np.array([1.3, 1.0])  # 1 + attention x average context
    occ = _occupancy(req)
    assert occ[0, 0] == pytest.approx(100_000 * 1.3 / 2.3, rel=1e-6)
    assert occ[1, 0] == pytest.approx(100_000 * 1.0 / 2.3, rel=1e-6)


@st.composite
def workloads(draw: st.DrawFn) -> window_split.Requests:
    rows = []
    for _ in range(draw(st.integers(1, 40))):
        x0 = draw(st.integers(0, 5 * WINDOW))
        p1 = x0 + draw(st.integers(0, 3_000_000))
        f = p1 + draw(st.integers(0, 90_000_000))
        first_token = draw(st.booleans())
        prefill = draw(st.sampled_from([0.0, 1.0, 37.0, 4000.0]))
        decode = draw(st.sampled_from([0.0, 1.0, 250.0]))
        if first_token:
            rows.append((draw(st.integers(0, 2)), prefill, decode, x0, p1, p1, f))
        else:
            rows.append((draw(st.integers(0, 2)), prefill, decode, x0, f, x0, f))
    req = _requests(rows)
    if draw(st.booleans()):  # context weights (metering/context_weights.py)
        contexts = st.floats(0.0, 130_000.0, allow_nan=False)
        req.p_work = 1.0 + 3.3e-5 * np.array([draw(contexts) for _ in rows])
        req.d_kv = 8.2e-6 * np.array([draw(contexts) for _ in rows])
    return req


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_shares_add_up_to_the_busy_time_of_each_window(req: window_split.Requests) -> None:
    occ = _occupancy(req)
    per_window: dict[tuple[int, int], float] = {}
    for (row, w), value in occ.items():
        assert value >= 0
        key = (int(req.rep[row]), w)
        per_window[key] = per_window.get(key, 0.0) + value
    order = np.lexsort((req.x0, req.rep))
    live = order[req.f[order] > req.x0[order]]
    merged = busy.islands(req.rep[live], req.x0[live], req.f[live])
    table = busy.busy_per_window(
        merged.column("rep").to_numpy(),
        merged.column("a").to_numpy(),
        merged.column("b").to_numpy(),
        WINDOW,
        0,
        10,
    )
    expected: dict[tuple[int, int], float] = {}
    for r, w, b in zip(
        *(table.column(c).to_pylist() for c in ("rep", "w", "busy_us")), strict=True
    ):
        expected[int(r), int(w)] = expected.get((int(r), int(w)), 0.0) + float(b)
    for key, value in expected.items():
        assert per_window.get(key, 0.0) == pytest.approx(value, rel=1e-7, abs=1.0)
    for key, value in per_window.items():
        assert value == pytest.approx(expected.get(key, 0.0), rel=1e-7, abs=1.0)
