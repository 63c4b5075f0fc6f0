"""Fixtures for metering tests: an in-memory store, the shipped catalog, workload builders."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb
import orjson
import pytest

from infermeter.kernel.price_catalog import Catalog, load_catalog
from infermeter.kernel.records import UsageRecord
from infermeter.metering.ingest import Ingestor
from infermeter.metering.store import Store, migrations, open_store

T0 = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)


@pytest.fixture
def store() -> Iterator[Store]:
    s = open_store("duckdb:///:memory:")
    yield s
    s.close()


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


def database_before(path: str, version: int) -> duckdb.DuckDBPyConnection:
    """A DuckDB file with the migrations older than ``version`` applied, as an earlier
    release left it, for testing migration ``version`` on it."""
    con = duckdb.connect(path)
    con.execute(
        "CREATE TABLE schema_migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    for number, name, sql in migrations():
        if number < version:
            con.execute(sql)
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, now()::TIMESTAMP)", [number, name]
            )
    return con


@pytest.fixture
def ingestor(store: Store) -> Ingestor:
    return Ingestor(store, lambda: T0.timestamp())


def ingest(ingestor: Ingestor, records: list[UsageRecord]) -> None:
    """Store records through the real JSON ingest path (in batches)."""
    for i in range(0, len(records), 5000):
        body = orjson.dumps([r.to_json() for r in records[i : i + 5000]])
        result = ingestor.usage(body)
        assert not result.rejected, result.rejected[:3]


@dataclass
class GroundTruth:
    """A generated workload with each request's true engine time and each replica's price."""

    records: list[UsageRecord] = field(default_factory=list)
    tenant_cost: dict[str, float] = field(default_factory=dict)
    idle_cost: dict[str, float] = field(default_factory=dict)
    replica_cost: dict[str, float] = field(default_factory=dict)
    hours: int = 0


def ground_truth_workload(
    prices_per_s: dict[str, float],
    hours: int = 3,
    seed: int = 7,
    a_true: float = 1.2e-4,
    b_true: float = 9.0e-3,
    noise: float = 0.03,
) -> GroundTruth:
    """Serial requests per replica (one at a time, so each request's GPU time is known):
    tenants with long prompts, long generations or both, idle gaps from none to minutes,
    client aborts (partial output) and errors (prefill only)."""
    rng = random.Random(seed)
    tenants = {
        "acme": (6000, 60),  # long prompts, short answers (RAG)
        "globex": (200, 900),  # short prompts, long generations
        "initech": (2000, 400),
        "umbrella": (100, 40),  # chatty small requests
    }
    truth = GroundTruth(hours=hours)
    end = T0 + timedelta(hours=hours)
    n = 0
    for replica, price in sorted(prices_per_s.items()):
        t = T0 + timedelta(seconds=rng.uniform(0, 30))
        busy = 0.0
        while True:
            tenant = rng.choice(sorted(tenants))
            p_mean, d_mean = tenants[tenant]
            prompt = max(1, int(rng.expovariate(1 / p_mean)))
            cached = rng.choice([0, 0, 0, prompt // 2])
            decode = max(1, int(rng.expovariate(1 / d_mean)))
            status = rng.choices(["ok", "client_abort", "error"], [90, 7, 3])[0]
            if status == "client_abort":
                decode = rng.randint(0, decode)
            if status == "error":
                decode = 0
            jitter = 1 + rng.uniform(-noise, noise)
            prefill_s = a_true * (prompt - cached) * jitter
            decode_s = b_true * decode * jitter
            duration = prefill_s + decode_s
            finish = t + timedelta(seconds=duration)
            if finish >= end - timedelta(seconds=1):
                break
            first = t + timedelta(seconds=prefill_s) if decode else None
            n += 1
            truth.records.append(
                UsageRecord(
                    request_id=f"gt-{n}",
                    tenant=tenant,
                    model="llama-3.1-8b",
                    replica=replica,
                    pool="gpu",
                    started_at=t,
                    first_token_at=first,
                    finished_at=finish,
                    status=status,
                    http_status=200 if status == "ok" else 499 if status == "client_abort" else 500,
                    prompt_tokens=prompt,
                    cached_prompt_tokens=cached,
                    completion_tokens=decode,
                    tags={"feature": rng.choice(["chat", "search"])},
                )
            )
            truth.tenant_cost[tenant] = truth.tenant_cost.get(tenant, 0.0) + duration * price
            busy += duration
            gap = rng.choice([0.0, 0.0, 0.5, 2.0, 10.0, rng.uniform(60, 900)])
            t = finish + timedelta(seconds=gap)
        total = hours * 3600 * price
        truth.replica_cost[replica] = total
        truth.idle_cost[replica] = total - busy * price
    return truth
