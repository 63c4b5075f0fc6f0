"""Metering against the simulator's ground-truth ledger, over real HTTP (simulator ->
collector -> metering; tests/metering/cost_truth_helpers.py). Bounded: two short cells.

The full grid (concurrency 1/8/64, two GPU profiles, 2 and 30 minutes) is the benchmark
``./dev.sh bench -k cost_accuracy``; its table is in docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.metering.cost_truth_helpers import TENANTS, CellResult, run_cell


def _check_books(cell: CellResult) -> None:
    print("\n" + "\n".join(cell.lines()))
    assert sum(cell.allocated_micro.values()) + cell.idle_micro == cell.bill_micro
    assert set(cell.true_micro) == {t.name for t in TENANTS}
    idle_error = abs(cell.idle_micro - cell.idle_true_micro) / cell.idle_true_micro
    assert idle_error < 0.02


@pytest.mark.slow
def test_serial_engine_costs_each_tenant_within_5_percent(tmp_path: Path) -> None:
    """One request at a time, per-token costs unknown to metering: each request's duration is
    its GPU time, so the split is right from the first window."""
    cell = run_cell(tmp_path, gpu="h100-sxm", concurrency=1, model_seconds=20, time_scale=1.0)
    _check_books(cell)
    for tenant in cell.true_micro:
        assert abs(cell.error(tenant)) < 0.05, tenant


@pytest.mark.slow
def test_continuous_batching_costs_each_tenant_within_25_percent(tmp_path: Path) -> None:
    """Eight concurrent streams on a MIG slice: prefill and decode share steps. The goal is 2%
    (docs/benchmarks.md says where it stands); this bound catches a regression to a fitted or
    default per-token split (-76% to +406% before); short cells on a loaded 2-core machine
    vary by several percent."""
    cell = run_cell(
        tmp_path, gpu="h100-sxm:3g.40gb", concurrency=8, model_seconds=30, time_scale=1.0
    )
    _check_books(cell)
    for tenant in cell.true_micro:
        assert abs(cell.error(tenant)) < 0.25, tenant
