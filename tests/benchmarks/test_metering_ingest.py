"""Metering ingest rate: JSON batches (store and HTTP) and Arrow IPC, into a DuckDB file.

Run: ./dev.sh bench -k metering_ingest   (prints records/s; no timed asserts)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from infermeter.metering.api import create_app
from infermeter.metering.ingest import Ingestor
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import MeteringSettings
from infermeter.metering.store import CHECKPOINT_THRESHOLD, Store, open_store
from tests.conftest import ServerThread

T0 = datetime(2026, 11, 1, tzinfo=UTC)
TOTAL = int(os.environ.get("INFERMETER_BENCH_INGEST", "400000"))
BATCH = 10_000


def records(start: int, n: int) -> list[dict[str, object]]:
    out = []
    for i in range(start, start + n):
        s = T0 + timedelta(milliseconds=i * 7)
        out.append(
            {
                "request_id": f"req-{i:010d}",
                "tenant": f"tenant-{i % 50}",
                "api_key_id": f"key-{i % 200}",
                "model": "llama-3.1-8b",
                "pool": "gpu",
                "replica": f"rep-{i % 20:02d}",
                "endpoint": "/v1/chat/completions",
                "stream": True,
                "status": "ok",
                "http_status": 200,
                "finish_reason": "stop",
                "started_at": s.isoformat().replace("+00:00", "Z"),
                "first_token_at": (s + timedelta(milliseconds=80))
                .isoformat()
                .replace("+00:00", "Z"),
                "finished_at": (s + timedelta(seconds=2)).isoformat().replace("+00:00", "Z"),
                "queue_s": 0.01,
                "prompt_tokens": 512 + i % 1000,
                "cached_prompt_tokens": 0,
                "completion_tokens": 128,
                "ttft_s": 0.08,
                "itl_mean_s": 0.015,
                "itl_p50_s": 0.014,
                "itl_max_s": 0.05,
                "e2e_s": 2.0,
                "upstream": "self_hosted",
                "tags": {"feature": "search"},
            }
        )
    return out


def report(label: str, n: int, seconds: float, cpu: float) -> None:
    print(
        f"METERING-INGEST {label}: {n} records in {seconds:.2f} s = {n / seconds:,.0f} rec/s "
        f"(process CPU {cpu:.2f} s)"
    )


def arrow_bodies(start: int, total: int, batch: int) -> list[bytes]:
    """Arrow IPC streams of ``total`` records from ``start`` (timestamps advancing like the JSON
    records), ``batch`` records each; tags as a struct column (``Table.from_pylist``)."""
    table = pa.Table.from_pylist(records(0, batch))
    for name in ("started_at", "first_token_at", "finished_at"):
        i = table.column_names.index(name)
        values = [
            datetime.fromisoformat(v.replace("Z", "+00:00")) for v in table.column(name).to_pylist()
        ]
        table = table.set_column(i, name, pa.array(values, pa.timestamp("us", "UTC")))
    bodies = []
    for first in range(start, start + total, batch):
        chunk = table.set_column(
            0, "request_id", pa.array([f"arrow-{first + i:010d}" for i in range(batch)])
        )
        shift = pa.scalar(timedelta(milliseconds=first * 7), pa.duration("us"))
        for name in ("started_at", "first_token_at", "finished_at"):
            i = chunk.column_names.index(name)
            chunk = chunk.set_column(i, name, pc.add(chunk.column(name), shift))
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, chunk.schema) as writer:
            writer.write_table(chunk)
        bodies.append(sink.getvalue().to_pybytes())
    return bodies


def timed(label: str, n: int, send: Callable[[], None], store: Store) -> None:
    """Run ``send`` and report its rate, then the rate counting the CHECKPOINT that writes what
    the batches left in the WAL into compressed row groups (batches of >= 122,880 rows are
    written compressed at commit, smaller ones go through the WAL)."""
    t, c = time.perf_counter(), time.process_time()
    send()
    report(label, n, *_since(t, c))
    store.connection.execute("CHECKPOINT")
    report(f"{label}, + checkpoint", n, *_since(t, c))


def test_metering_ingest_json_and_arrow(tmp_path: Path) -> None:
    store = open_store(f"duckdb:///{tmp_path}/ingest.duckdb")
    ingestor = Ingestor(store, time.time)
    start = 0
    for batch in (BATCH, 50_000):
        bodies = [orjson.dumps(records(i, batch)) for i in range(start, start + TOTAL, batch)]
        print(f"\nbody size: {len(bodies[0]) / batch:.0f} bytes/record, batches of {batch}")

        def send_json(bodies: list[bytes] = bodies, batch: int = batch) -> None:
            for body in bodies:
                assert ingestor.usage(body).accepted == batch

        timed(f"JSON array, in process, batches of {batch:,}", TOTAL, send_json, store)
        start += TOTAL
        if batch == BATCH:

            def resend(bodies: list[bytes] = bodies) -> None:
                for body in bodies[:10]:
                    assert ingestor.usage(body).duplicates == BATCH

            timed("JSON re-sent (all duplicates)", 10 * BATCH, resend, store)

    bodies = [orjson.dumps(records(i, BATCH)) for i in range(start, start + TOTAL, BATCH)]

    def send_json_two_threads(bodies: list[bytes] = bodies) -> None:
        with ThreadPoolExecutor(2) as pool:
            assert all(r.accepted == BATCH for r in pool.map(ingestor.usage, bodies))

    timed(f"JSON array, 2 threads, batches of {BATCH:,}", TOTAL, send_json_two_threads, store)
    start += TOTAL

    # 245,760 = two DuckDB row groups: a batch of whole row groups is written compressed at
    # commit and leaves nothing for the checkpoint to merge
    arrow = "application/vnd.apache.arrow.stream"
    for batch in (100_000, 245_760):
        total = 2 * TOTAL // batch * batch
        bodies = arrow_bodies(start, total, batch)

        def send_arrow(bodies: list[bytes] = bodies, batch: int = batch) -> None:
            for body in bodies:
                assert ingestor.usage(body, arrow).accepted == batch

        timed(f"Arrow IPC, in process, batches of {batch:,}", total, send_arrow, store)
        start += total

    def resend_arrow(bodies: list[bytes] = bodies) -> None:
        for body in bodies[:2]:
            assert ingestor.usage(body, arrow).duplicates == 245_760

    timed("Arrow re-sent (all duplicates)", 2 * 245_760, resend_arrow, store)
    store.close()


def test_metering_ingest_over_http(tmp_path: Path, serve: Callable[..., ServerThread]) -> None:
    """JSON batches over HTTP from one client, then from two at once (the service parses
    batches concurrently; only the duplicate check, insert and commit are serialised)."""
    settings = MeteringSettings(
        storage=f"duckdb:///{tmp_path}/http.duckdb", ingest_token="t", allocate_every_s=0
    )
    service = MeteringService(settings)
    try:
        url = serve(create_app(service)).url
        headers = {"Authorization": "Bearer t", "Content-Type": "application/json"}
        n = TOTAL // 2
        for clients in (1, 2):
            first = (clients - 1) * n
            bodies = [orjson.dumps(records(i, BATCH)) for i in range(first, first + n, BATCH)]

            def send(part: list[bytes]) -> None:
                with httpx.Client(timeout=120) as client:
                    for body in part:
                        response = client.post(f"{url}/v1/usage", content=body, headers=headers)
                        assert response.json()["accepted"] == BATCH

            t, c = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(send, [bodies[i::clients] for i in range(clients)]))
            report(
                f"JSON array over HTTP, {clients} client(s) (clients + server in this process)",
                n,
                *_since(t, c),
            )
    finally:
        service.stop()


def test_metering_ingest_insert_floor(tmp_path: Path) -> None:
    """What the insert itself costs: the stored `usage` rows of 200,000 records appended in
    batches of 10,000 (one transaction each, as ingest does) to a table with no key, with the
    `request_id` primary key (ON CONFLICT DO NOTHING), and with a 128-bit hash key instead."""
    store = open_store(f"duckdb:///{tmp_path}/source.duckdb")
    ingestor = Ingestor(store, time.time)
    for start in range(0, 200_000, BATCH):
        ingestor.usage(orjson.dumps(records(start, BATCH)))
    rows = store.connection.execute("SELECT * FROM usage").fetch_arrow_table()
    store.close()
    variants = {
        "no key": ("CREATE TABLE u AS SELECT * FROM src LIMIT 0", "SELECT * FROM st", ""),
        "request_id primary key": (
            "CREATE TABLE u AS SELECT * FROM src LIMIT 0; "
            "ALTER TABLE u ADD PRIMARY KEY (request_id)",
            "SELECT * FROM st",
            " ON CONFLICT DO NOTHING",
        ),
        "md5_number(request_id) primary key": (
            "CREATE TABLE u AS SELECT md5_number(request_id) AS k, * FROM src LIMIT 0; "
            "ALTER TABLE u ADD PRIMARY KEY (k)",
            "SELECT md5_number(request_id), * FROM st",
            " ON CONFLICT DO NOTHING",
        ),
    }
    for i, (label, (ddl, select, conflict)) in enumerate(variants.items()):
        con = duckdb.connect(str(tmp_path / f"floor-{i}.duckdb"))
        con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
        con.register("src", rows)
        con.execute(ddl)
        t, c = time.perf_counter(), time.process_time()
        for start in range(0, rows.num_rows, BATCH):
            con.register("st", rows.slice(start, BATCH))
            con.execute("BEGIN TRANSACTION")
            con.execute(f"INSERT INTO u {select}{conflict}")
            con.execute("COMMIT")
        report(f"insert only, {label}", rows.num_rows, *_since(t, c))
        con.close()


def _since(wall: float, cpu: float) -> tuple[float, float]:
    return time.perf_counter() - wall, time.process_time() - cpu
