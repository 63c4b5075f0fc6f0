"""Ingest: formats, idempotency, per-record rejection, dead letters, crash atomicity."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infermeter.kernel.records import UsageRecord, cloudevent, parse_usage_record
from infermeter.metering.errors import BatchError, RecordError
from infermeter.metering.ingest import Ingestor
from infermeter.metering.store import Store, apply_migrations, migrations, open_store
from tests.conftest import REPO
from tests.metering.conftest import T0, database_before


def record(i: int, **overrides: Any) -> dict[str, Any]:
    base = UsageRecord(
        request_id=f"req-{i}",
        tenant=f"t{i % 3}",
        model="llama",
        replica="r1",
        started_at=T0 + timedelta(seconds=i),
        first_token_at=T0 + timedelta(seconds=i, milliseconds=80),
        finished_at=T0 + timedelta(seconds=i + 2),
        prompt_tokens=100 + i,
        cached_prompt_tokens=10,
        completion_tokens=20,
        tags={"feature": "search"},
    ).to_json()
    base.update(overrides)
    return base


def count(store: Store, table: str = "usage") -> int:
    row = store.connection.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def test_json_array_is_stored_with_every_field(store: Store, ingestor: Ingestor) -> None:
    records = [record(i) for i in range(50)]
    result = ingestor.usage(orjson.dumps(records))
    assert result.to_json() == {"accepted": 50, "duplicates": 0, "conflicts": 0, "rejected": []}
    row = store.connection.execute(
        "SELECT tenant, feature, prompt_tokens, cached_prompt_tokens, first_token_at, tags "
        "FROM usage WHERE request_id = 'req-7'"
    ).fetchone()
    assert row == (
        "t1",
        "search",
        107,
        10,
        (T0 + timedelta(seconds=7, milliseconds=80)).replace(tzinfo=None),
        {"feature": "search"},
    )
    assert ingestor.stats.kinds["usage"].fast_path_batches == 1


def test_repeated_ids_change_nothing(store: Store, ingestor: Ingestor) -> None:
    body = orjson.dumps([record(i) for i in range(20)])
    ingestor.usage(body)
    changed = [record(i, tenant="other") for i in range(20)]
    result = ingestor.usage(orjson.dumps(changed))
    assert (result.accepted, result.duplicates) == (0, 20)
    tenants = store.connection.execute("SELECT DISTINCT tenant FROM usage ORDER BY 1").fetchall()
    assert tenants == [("t0",), ("t1",), ("t2",)]


def test_bad_records_rejected_with_index_and_field_good_ones_stored(
    store: Store, ingestor: Ingestor
) -> None:
    records = [record(i) for i in range(6)]
    records[1]["prompt_tokens"] = -5
    records[3]["finished_at"] = "2020-01-01T00:00:00Z"
    records[4] = "not an object"  # type: ignore[call-overload]
    records[5]["status"] = "exploded"
    result = ingestor.usage(orjson.dumps(records))
    assert result.accepted == 2
    assert [(r["index"], r["field"]) for r in result.rejected] == [
        (1, "prompt_tokens"),
        (3, "finished_at"),
        (4, "record"),
        (5, "status"),
    ]
    dead = store.connection.execute(
        "SELECT batch_index, field, payload FROM dead_letter ORDER BY batch_index"
    ).fetchall()
    assert [d[:2] for d in dead] == [
        (1, "prompt_tokens"),
        (3, "finished_at"),
        (4, "record"),
        (5, "status"),
    ]
    assert orjson.loads(dead[0][2])["prompt_tokens"] == -5
    assert ingestor.stats.kinds["usage"].dead_lettered == 4


def test_duplicates_inside_one_batch_keep_the_first(store: Store, ingestor: Ingestor) -> None:
    result = ingestor.usage(orjson.dumps([record(1), record(1, tenant="second"), record(2)]))
    assert (result.accepted, result.duplicates) == (2, 1)
    assert store.connection.execute(
        "SELECT tenant FROM usage WHERE request_id = 'req-1'"
    ).fetchone() == ("t1",)


def test_cloudevents_batch(store: Store, ingestor: Ingestor) -> None:
    events = [cloudevent(parse_usage_record(record(i)), "collector/test") for i in range(10)]
    events[2]["type"] = "com.example.other"
    result = ingestor.usage(orjson.dumps(events), "application/cloudevents-batch+json")
    assert result.accepted == 9
    assert [(r["index"], r["field"]) for r in result.rejected] == [(2, "type")]


def test_arrow_ipc_stream(store: Store, ingestor: Ingestor) -> None:
    n = 1000
    table = pa.table(
        {
            "request_id": [f"a-{i}" for i in range(n)],
            "tenant": ["t"] * n,
            "model": ["m"] * n,
            "started_at": pa.array(
                [T0 + timedelta(seconds=i) for i in range(n)], pa.timestamp("us", "UTC")
            ),
            "finished_at": pa.array(
                [T0 + timedelta(seconds=i + 1) for i in range(n)], pa.timestamp("us", "UTC")
            ),
            "prompt_tokens": pa.array([5] * n, pa.int32()),
            "completion_tokens": [7] * n,
        }
    )
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    body = sink.getvalue().to_pybytes()
    result = ingestor.usage(body, "application/vnd.apache.arrow.stream")
    assert result.to_json() == {"accepted": n, "duplicates": 0, "conflicts": 0, "rejected": []}
    assert ingestor.usage(body, "application/vnd.apache.arrow.stream").duplicates == n
    row = store.connection.execute(
        "SELECT started_at, status, endpoint, completion_tokens FROM usage WHERE request_id='a-3'"
    ).fetchone()
    assert row == (
        (T0 + timedelta(seconds=3)).replace(tzinfo=None),
        "ok",
        "/v1/chat/completions",
        7,
    )


def test_arrow_batch_with_bad_rows_names_them(store: Store, ingestor: Ingestor) -> None:
    table = pa.table(
        {
            "request_id": ["x", "y"],
            "tenant": ["t", ""],
            "model": ["m", "m"],
            "started_at": pa.array([T0, T0], pa.timestamp("us", "UTC")),
            "finished_at": pa.array([T0, T0], pa.timestamp("us", "UTC")),
        }
    )
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    result = ingestor.usage(sink.getvalue().to_pybytes(), "application/vnd.apache.arrow.stream")
    assert result.accepted == 1 and result.rejected == [
        {"index": 1, "field": "tenant", "error": "must not be empty"}
    ]


@pytest.mark.parametrize(
    ("body", "ctype", "field"),
    [
        (b"{not json", "application/json", "body"),
        (b'{"request_id": "x"}', "application/json", "body"),
        (b"garbage", "application/vnd.apache.arrow.stream", "body"),
    ],
)
def test_unreadable_bodies_raise_batch_error(
    ingestor: Ingestor, body: bytes, ctype: str, field: str
) -> None:
    with pytest.raises(BatchError) as info:
        ingestor.usage(body, ctype)
    assert info.value.field == field


def test_gpu_samples_idempotent_by_key(store: Store, ingestor: Ingestor) -> None:
    samples = [
        {
            "ts": (T0 + timedelta(seconds=i)).isoformat(),
            "node": "n",
            "gpu_uuid": "GPU-0",
            "gpu_model": "NVIDIA L4",
            "replica": "r",
            "util_pct": 50,
            "energy_j": i * 70.0,
        }
        for i in range(30)
    ]
    samples.append(
        {"ts": T0.isoformat(), "node": "n", "gpu_uuid": "GPU-0", "gpu_model": "x", "util_pct": 150}
    )
    result = ingestor.gpu_samples(orjson.dumps(samples))
    assert (result.accepted, result.rejected[0]["field"]) == (30, "util_pct")
    assert ingestor.gpu_samples(orjson.dumps(samples[:30])).duplicates == 30
    assert count(store, "gpu_samples") == 30


# The vectorised fast path must accept exactly what parse_usage_record accepts.
MUTATIONS: dict[str, list[Any]] = {
    "request_id": [None, "", 5, "x" * 513, "ok-id", 'q"uo\\te', "é-ü", "x" * 511 + "é"],
    "tenant": [None, "", ["a"], "t", {"a": "b"}, "t\u00e9\n"],
    "model": [None, 1.5, "m"],
    "status": [None, "ok", "cache_hit", "bogus", 3],
    "stream": [None, True, "yes", 1, "true", False, 0],
    "http_status": [None, 99, 200, 600, 404.0, True, "200", 2e2],
    "started_at": ["2026-11-02T00:00:00Z", "2026-11-02T00:00:00", "yesterday", 1700000000, None],
    "first_token_at": [None, "2026-11-02T00:00:00.5+00:00", "bad"],
    "finished_at": ["2026-11-02T00:00:01.000001Z", "2026-11-01T00:00:00Z", None],
    "prompt_tokens": [None, 0, 10, -1, 2.5, "7", 1e3, 2**63, -0],
    "cached_prompt_tokens": [None, 0, 5, 50],
    "completion_tokens": [None, 3, -3],
    "queue_s": [None, 0.1, -0.1, "1", True, {"a": 1}, 3, 1e-7],
    "ttft_s": [None, 2, False],
    "upstream": [None, "managed", "other"],
    "tags": [
        None,
        {},
        {"feature": "x"},
        {"a": 1},
        {"k" * 129: "v"},
        [],
        "s",
        {"a": 'x"y'},
        {"a": None},
        {"é": "ü"},
        {"a": {"b": "c"}},
        {f"k{i}": "v" for i in range(17)},
    ],
    "finish_reason": [None, "stop", 5, ["x"], "a\\b"],
}


STORED_FIELDS = (
    "request_id, tenant, model, finish_reason, stream, http_status, prompt_tokens, queue_s, "
    "started_at, first_token_at, tags"
)


def stored_form(rec: UsageRecord) -> tuple[Any, ...]:
    first = rec.first_token_at.astimezone(UTC).replace(tzinfo=None) if rec.first_token_at else None
    return (
        rec.request_id,
        rec.tenant,
        rec.model,
        rec.finish_reason,
        rec.stream,
        rec.http_status,
        rec.prompt_tokens,
        rec.queue_s,
        rec.started_at.astimezone(UTC).replace(tzinfo=None),
        first,
        rec.tags,
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.dictionaries(st.sampled_from(sorted(MUTATIONS)), st.integers(0, 11), max_size=4),
        min_size=1,
        max_size=8,
    )
)
def test_fast_path_agrees_with_parse_usage_record(mutations: list[dict[str, int]]) -> None:
    """Whichever path a batch takes, it stores exactly what parse_usage_record reads (first
    record of an id wins) with the same values."""
    store = open_store("duckdb:///:memory:")
    try:
        records = []
        for i, change in enumerate(mutations):
            rec = {
                "request_id": f"id-{i}",
                "tenant": "t",
                "model": "m",
                "started_at": "2026-11-02T00:00:00Z",
                "finished_at": "2026-11-02T00:00:01Z",
                "prompt_tokens": 10,
            }
            for key, pick in change.items():
                options = MUTATIONS[key]
                value = options[pick % len(options)]
                if value is None:
                    rec.pop(key, None)
                else:
                    rec[key] = value
            records.append(rec)
        expected: dict[str, tuple[Any, ...]] = {}
        for rec in records:
            with contextlib.suppress(RecordError):
                parsed = parse_usage_record(rec)
                expected.setdefault(parsed.request_id, stored_form(parsed))
        ingestor = Ingestor(store, lambda: T0.timestamp())
        result = ingestor.usage(orjson.dumps(records))
        stored = store.connection.execute(
            f"SELECT {STORED_FIELDS} FROM usage ORDER BY request_id"
        ).fetchall()
        assert stored == [expected[k] for k in sorted(expected)]
        assert result.accepted + result.duplicates + len(result.rejected) == len(records)
    finally:
        store.close()


def test_fast_path_reads_escaped_and_unicode_strings(store: Store, ingestor: Ingestor) -> None:
    records = [
        record(1, request_id='q"1\\', tenant="t\u00e9\n", tags={"é": 'a"b', "f": "ü"}),
        record(2, finish_reason="stop", http_status=201, stream=True, queue_s=0),
        record(3, tags={}),
    ]
    result = ingestor.usage(orjson.dumps(records))
    assert (result.accepted, ingestor.stats.kinds["usage"].fast_path_batches) == (3, 1)
    stored = store.connection.execute(
        f"SELECT {STORED_FIELDS} FROM usage ORDER BY started_at"
    ).fetchall()
    assert stored == [stored_form(parse_usage_record(r)) for r in records]


CRASH_WRITER = textwrap.dedent(
    """
    import sys, time, orjson
    import pyarrow as pa, pyarrow.ipc as ipc
    from datetime import datetime, timedelta, UTC
    from infermeter.metering.store import open_store
    from infermeter.metering.ingest import Ingestor
    store = open_store("duckdb:///" + sys.argv[1])
    ing = Ingestor(store, time.time)
    t0 = datetime(2026, 11, 2, tzinfo=UTC)
    batch, form = int(sys.argv[2]), sys.argv[3]
    base = pa.table({
        "tenant": ["t"] * batch, "model": ["m"] * batch,
        "started_at": pa.array([t0 + timedelta(seconds=i) for i in range(batch)],
                               pa.timestamp("us", "UTC")),
        "finished_at": pa.array([t0 + timedelta(seconds=i + 1) for i in range(batch)],
                                pa.timestamp("us", "UTC"))})
    for b in range(10_000):
        if form == "json":
            recs = [{"request_id": f"b{b}-{i}", "tenant": "t", "model": "m",
                     "started_at": (t0 + timedelta(seconds=i)).isoformat(),
                     "finished_at": (t0 + timedelta(seconds=i + 1)).isoformat()}
                    for i in range(batch)]
            ing.usage(orjson.dumps(recs))
        else:  # whole row groups, written compressed at commit instead of through the WAL
            table = base.append_column("request_id", pa.array([f"b{b}-{i}" for i in range(batch)]))
            sink = pa.BufferOutputStream()
            with ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            ing.usage(sink.getvalue().to_pybytes(), "application/vnd.apache.arrow.stream")
        print(b, flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(("form", "batch"), [("json", 20_000), ("arrow", 245_760)])
def test_crash_mid_batch_leaves_whole_batches_only(tmp_path: Path, form: str, batch: int) -> None:
    db = tmp_path / "crash.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_WRITER, str(db), str(batch), form],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    committed = 0
    while committed < 3:
        line = proc.stdout.readline()
        assert line, "writer died before committing three batches"
        committed += 1
    time.sleep(0.15)  # let it get into the middle of the next batch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    store = open_store(f"duckdb:///{db}")
    try:
        n = count(store)
        per_batch = store.connection.execute(
            "SELECT split_part(request_id, '-', 1) AS b, count(*) FROM usage GROUP BY b"
        ).fetchall()
    finally:
        store.close()
    assert n >= 3 * batch and n % batch == 0
    assert all(c == batch for _, c in per_batch)


def arrow_body(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_arrow_tags_as_struct_become_a_map_without_null_fields(
    store: Store, ingestor: Ingestor
) -> None:
    tags = [{"feature": "a", "team": None}, None, {"feature": None, "team": "t"}]
    table = pa.table(
        {
            "request_id": ["s0", "s1", "s2"],
            "tenant": ["t"] * 3,
            "model": ["m"] * 3,
            "started_at": pa.array([T0] * 3, pa.timestamp("us", "UTC")),
            "finished_at": pa.array([T0] * 3, pa.timestamp("us", "UTC")),
            "tags": pa.array(tags),
        }
    )
    result = ingestor.usage(arrow_body(table), "application/vnd.apache.arrow.stream")
    assert result.accepted == 3
    rows = store.connection.execute(
        "SELECT request_id, tags, feature FROM usage ORDER BY request_id"
    ).fetchall()
    assert rows == [("s0", {"feature": "a"}, "a"), ("s1", {}, ""), ("s2", {"team": "t"}, "")]


def test_arrow_struct_tags_must_be_strings(ingestor: Ingestor) -> None:
    table = pa.table(
        {
            "request_id": ["x"],
            "tenant": ["t"],
            "model": ["m"],
            "started_at": pa.array([T0], pa.timestamp("us", "UTC")),
            "finished_at": pa.array([T0], pa.timestamp("us", "UTC")),
            "tags": pa.array([{"n": 1}]),
        }
    )
    with pytest.raises(BatchError) as info:
        ingestor.usage(arrow_body(table), "application/vnd.apache.arrow.stream")
    assert info.value.field == "tags"


def test_the_same_batch_sent_concurrently_is_stored_once(store: Store, ingestor: Ingestor) -> None:
    body = orjson.dumps([record(i) for i in range(2000)])
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ingestor.usage(body), range(4)))
    assert sorted(r.accepted for r in results) == [0, 0, 0, 2000]
    assert all(r.accepted + r.duplicates == 2000 for r in results)
    assert count(store) == 2000


def test_a_resent_record_is_a_duplicate_in_a_batch_with_other_times(
    store: Store, ingestor: Ingestor
) -> None:
    ingestor.usage(orjson.dumps([record(i) for i in range(0, 100, 10)]))
    result = ingestor.usage(orjson.dumps([record(i) for i in range(100)]))
    assert (result.accepted, result.duplicates) == (90, 10)
    assert count(store) == 100


def test_migration_005_keeps_stored_usage_and_drops_only_the_key(tmp_path: Path) -> None:
    con = database_before(str(tmp_path / "old.duckdb"), 5)
    old = Store(con, "duckdb:///old", str(tmp_path / "old.duckdb"))
    Ingestor(old, lambda: T0.timestamp()).usage(orjson.dumps([record(i) for i in range(30)]))
    columns = (
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = 'usage' ORDER BY ordinal_position"
    )
    before = con.execute(columns).fetchall()
    assert apply_migrations(con) == [v for v, _, _ in migrations() if v >= 5]
    assert con.execute(columns).fetchall() == before
    keys = con.execute(
        "SELECT count(*) FROM duckdb_constraints() "
        "WHERE table_name = 'usage' AND constraint_type = 'PRIMARY KEY'"
    ).fetchone()
    assert keys == (0,)
    assert count(old) == 30
    result = Ingestor(old, lambda: T0.timestamp()).usage(
        orjson.dumps([record(i) for i in range(25, 40)])
    )
    assert (result.accepted, result.duplicates, count(old)) == (10, 5, 40)
    con.close()
