"""One run's arithmetic: computed part by part (a few replicas at a time) it gives exactly
what it gives in one piece, and the invariant holds per replica-window."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infermeter.metering import calibration, window_costs
from infermeter.metering.context_weights import ContextWeightBook

W = 60_000_000
W_SINCE, W_UNTIL = 1000, 1060


def workload(seed: int, n: int = 3000, replicas: int = 5) -> tuple[pa.Table, pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    profiles = pa.table(
        {
            "profile": np.arange(replicas * 2),
            "replica": [f"r{i // 2}" for i in range(replicas * 2)],
            "tenant": [f"t{i % 3}" for i in range(replicas * 2)],
            "model": [f"m{(i // 2) % 2}" for i in range(replicas * 2)],
            "feature": [f"f{i % 2}" for i in range(replicas * 2)],
            "api_key_id": [f"k{i}" for i in range(replicas * 2)],
            "pool": [f"p{(i // 2) % 2}" for i in range(replicas * 2)],
        }
    )
    x0 = (W_SINCE * W + rng.integers(-W, 60 * W, n)).astype(np.int64)
    dur = rng.integers(0, 5 * W, n)
    f = x0 + dur
    p1 = x0 + (dur * rng.random(n)).astype(np.int64)
    prompt = rng.integers(0, 9000, n)
    requests = pa.table(
        {
            "profile": rng.integers(0, replicas * 2, n),
            "request_id": [f"q{i}" for i in range(n)],
            "h": rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64),
            "prefill": prompt.astype(float),
            "decode": rng.integers(0, 900, n).astype(float),
            "prompt_tokens": prompt,
            "cached_prompt_tokens": np.zeros(n, dtype=np.int64),
            "completion_tokens": rng.integers(0, 900, n),
            "x0": x0,
            "f": f,
            "p1": p1,
            "d0": p1,
        }
    )
    reps = [f"r{i}" for i in range(replicas - 1)]  # the last replica has no price
    w = np.arange(W_SINCE, W_UNTIL)
    capacity = pa.table(
        {
            "replica": np.repeat(reps, len(w)).tolist(),
            "w": np.tile(w, len(reps)),
            "pool": ["p"] * (len(reps) * len(w)),
            "model": [""] * (len(reps) * len(w)),
            "gpu": ["h100-sxm"] * (len(reps) * len(w)),
            "pricing": ["on_demand"] * (len(reps) * len(w)),
            "gpu_equiv": np.ones(len(reps) * len(w)),
            "provisioned_s": np.full(len(reps) * len(w), 60.0),
            "energy_j": np.full(len(reps) * len(w), 3000.0),
            "capacity_usd": np.full(len(reps) * len(w), 0.1),
            "energy_usd": np.zeros(len(reps) * len(w)),
            "cost_micro": np.full(len(reps) * len(w), 114_667, dtype=np.int64),
            "priced": np.ones(len(reps) * len(w), dtype=bool),
        }
    )
    return requests, profiles, capacity


def run(tables: tuple[pa.Table, pa.Table, pa.Table], chunk: int) -> window_costs.WindowCosts:
    return window_costs.compute(
        *tables,
        window_us=W,
        w_since=W_SINCE,
        w_until=W_UNTIL,
        choose=lambda model, sums: calibration.choose(model, sums, None),
        context=ContextWeightBook(),
        chunk_requests=chunk,
    )


def sorted_rows(table: pa.Table) -> pa.Table:
    return table.sort_by([("row", "ascending"), ("w", "ascending")])


def test_parts_give_exactly_the_one_piece_result() -> None:
    for seed in range(3):
        tables = workload(seed)
        whole, parts = run(tables, 10**9), run(tables, 1)
        assert sorted_rows(whole.rows).equals(sorted_rows(parts.rows))
        assert whole.replicas.equals(parts.replicas)
        assert [c.to_json() for c in whole.calibrations] == [
            c.to_json() for c in parts.calibrations
        ]
        assert whole.unpriced_requests == parts.unpriced_requests > 0


def test_every_replica_window_splits_exactly() -> None:
    costs = run(workload(7), 2)
    rows = costs.rows.group_by(["rep", "w"]).aggregate([("cost_micro", "sum")])
    names = dict(
        zip(
            *[
                costs.names.filter(pc.equal(costs.names["dim"], "replica")).column(c).to_pylist()
                for c in ("code", "name")
            ],
            strict=True,
        )
    )
    split = {
        (names[r], w): c
        for r, w, c in zip(
            rows["rep"].to_pylist(), rows["w"].to_pylist(), rows["cost_micro_sum"].to_pylist(),
            strict=True,
        )
    }  # fmt: skip
    replicas = costs.replicas
    for replica, w, allocated, cost, busy in zip(
        *[
            replicas.column(c).to_pylist()
            for c in ("replica", "w", "allocated_micro", "cost_micro", "busy_s")
        ],
        strict=True,
    ):
        assert split.get((replica, w), 0) == allocated
        assert 0 <= allocated <= cost
        assert allocated == cost - round(cost * (60.0 - busy) / 60.0)
    assert min(costs.rows["cost_micro"].to_pylist()) >= 0
