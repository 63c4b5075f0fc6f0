"""Cost accuracy against the simulator's ground-truth ledger: per tenant true vs allocated.

Simulator (with ``--ledger``) -> collector -> metering over real HTTP on 127.0.0.1, five
seeded tenants (tests/metering/cost_truth_helpers.py), the default 60 s window. Cells:
GPU profile x concurrency x modelled minutes, from the environment:

- ``INFERMETER_BENCH_GPUS`` (default ``h100-sxm,h100-sxm:3g.40gb``)
- ``INFERMETER_BENCH_CONCURRENCY`` (default ``1,8,64``)
- ``INFERMETER_BENCH_MINUTES`` (default ``2``; ``2,30`` for the long runs)
- ``INFERMETER_BENCH_TIME_SCALE`` (wall seconds per modelled second, default 1)

Run: ``./dev.sh bench -k cost_accuracy``. Bounded: every cell stops at its modelled duration
(plus the requests in flight). Prints one table per cell.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.metering.cost_truth_helpers import run_cell

GPUS = os.environ.get("INFERMETER_BENCH_GPUS", "h100-sxm,h100-sxm:3g.40gb").split(",")
CONCURRENCY = [int(c) for c in os.environ.get("INFERMETER_BENCH_CONCURRENCY", "1,8,64").split(",")]
MINUTES = [float(m) for m in os.environ.get("INFERMETER_BENCH_MINUTES", "2").split(",")]
TIME_SCALE = float(os.environ.get("INFERMETER_BENCH_TIME_SCALE", "1"))


@pytest.mark.parametrize("minutes", MINUTES)
@pytest.mark.parametrize("concurrency", CONCURRENCY)
@pytest.mark.parametrize("gpu", GPUS)
def test_cost_accuracy(gpu: str, concurrency: int, minutes: float, tmp_path: Path) -> None:
    cell = run_cell(
        tmp_path,
        gpu=gpu,
        concurrency=concurrency,
        model_seconds=minutes * 60,
        time_scale=TIME_SCALE,
    )
    print("\nCOST-ACCURACY " + "\n".join(cell.lines()))
    worst = max(abs(cell.error(t)) for t in cell.true_micro)
    print(f"  worst tenant error {100 * worst:.2f}%")
    assert sum(cell.allocated_micro.values()) + cell.idle_micro == cell.bill_micro
