"""Benchmark data for metering, generated with DuckDB SQL in the store itself: N requests over
D days on R replicas (serial-ish Poisson traffic per replica, mixed prompt / output lengths,
several tenants, models, features and keys) plus one GPU sample per replica per minute."""

from __future__ import annotations

from datetime import UTC, datetime

from infermeter.metering.settings import ReplicaSettings
from infermeter.metering.store import Store

START = datetime(2026, 10, 1, tzinfo=UTC)


def replicas(count: int) -> dict[str, ReplicaSettings]:
    """Replica configuration: a mix of whole GPUs and MIG slices."""
    kinds = [("h100-sxm", ""), ("h100-sxm", "3g.40gb"), ("a100-80gb", ""), ("l40s", ""), ("l4", "")]
    out = {}
    for i in range(count):
        gpu, mig = kinds[i % len(kinds)]
        out[f"rep-{i:02d}"] = ReplicaSettings(
            gpu=gpu, mig_profile=mig, count=1, pool=f"pool-{i % 4}", model=f"model-{i % 3}"
        )
    return out


def generate(
    store: Store, requests: int, days: int, n_replicas: int, samples: bool = False
) -> None:
    """Fill ``usage`` (and optionally ``gpu_samples``) with synthetic traffic."""
    span_us = days * 86_400_000_000
    start_us = int(START.timestamp()) * 1_000_000
    per_replica = requests // n_replicas
    con = store.connection
    con.execute(
        f"""
        INSERT INTO usage
        WITH g AS (
            SELECT i,
                   i % {n_replicas} AS rep,
                   (hash(i) % 1000000007)::BIGINT AS h,
                   {start_us}
                       + (i // {n_replicas})::BIGINT * {span_us} // ({per_replica} + 1) AS s
            FROM range({requests}) t(i)
        ), t AS (
            SELECT *, (h % 8000) + 1 AS prompt, ((h // 8000) % 1200) + 1 AS completion,
                   ((h // 9600) % 100) AS pct
            FROM g
        )
        SELECT 'req-' || i, 'tenant-' || (h % 50), 'key-' || (h % 200), 'model-' || (rep % 3),
               'pool-' || (rep % 4), 'rep-' || lpad(rep::VARCHAR, 2, '0'), '/v1/chat/completions',
               true, CASE WHEN pct < 2 THEN 'client_abort' WHEN pct < 3 THEN 'error' ELSE 'ok' END,
               CASE WHEN pct < 2 THEN 499 WHEN pct < 3 THEN 500 ELSE 200 END, 'stop',
               make_timestamp(s), make_timestamp(s + 50000 + prompt * 20),
               make_timestamp(s + 50000 + prompt * 20 + completion * 6000), 0.01,
               prompt, prompt // 4 * (h % 2), completion,
               (50000 + prompt * 20) / 1e6, 0.006, 0.006, 0.02,
               (50000 + prompt * 20 + completion * 6000) / 1e6, 'self_hosted',
               MAP {{'feature': 'feature-' || (h % 7)}}, 'feature-' || (h % 7),
               make_timestamp(s)
        FROM t
        """
    )
    if samples:
        con.execute(
            f"""
            INSERT INTO gpu_samples
            SELECT make_timestamp({start_us} + m * 60000000), 'node-' || (r // 8), 'GPU-' || r,
                   '', 'NVIDIA H100 80GB HBM3', '', 'rep-' || lpad(r::VARCHAR, 2, '0'), 80.0,
                   60e9::BIGINT, 80e9::BIGINT, 500.0, m * 60.0 * 500.0, 60.0, 1980.0,
                   make_timestamp({start_us} + m * 60000000)
            FROM range({days * 1440}) a(m), range({n_replicas}) b(r)
            """
        )
