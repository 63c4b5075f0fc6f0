"""Property-based fuzzing of metering's ingest readers (metering/ingest.py, metering/columns.py,
metering/sql/ingest.sql, and the per-record readers of infermeter/kernel/records.py).

Random valid usage records and GPU samples (any Unicode, edge lengths, integers up to 2^63-1,
any finite float, timestamps with any offset) go in as a JSON array, a CloudEvents batch or an
Arrow IPC stream, into a real in-memory DuckDB store, and read back equal to what was
generated. A record mutated one way (wrong type, missing or empty field, NaN or infinity,
huge integer, out-of-range time, unknown status...) is rejected alone, at its index, with the
mutated field named, while the rest of its batch is stored. Garbage bodies raise only
``BatchError`` (a 400 naming the body), never anything the API would answer with a 500.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infermeter.kernel.records import (
    MAX_INT,
    STATUSES,
    UPSTREAM_KINDS,
    GpuSample,
    UsageRecord,
    cloudevent,
)
from infermeter.metering.columns import SAMPLE_SCHEMA, USAGE_SCHEMA
from infermeter.metering.errors import BatchError
from infermeter.metering.ingest import Ingestor
from infermeter.metering.store import Store, open_store
from tests.metering.conftest import T0

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
ARROW = "application/vnd.apache.arrow.stream"


def dumps(value: Any) -> bytes:
    """JSON as any client may write it (integers of any size: orjson stops at 64 bits)."""
    return json.dumps(value, allow_nan=False).encode()


@pytest.fixture(scope="module")
def shared() -> Iterator[Store]:
    """One store for every example of a module (each example uses its own ids)."""
    s = open_store("duckdb:///:memory:")
    yield s
    s.close()


_counter = itertools.count()
TEXT = st.one_of(
    st.text(min_size=1, max_size=12),
    st.sampled_from(['q"uo\\te', "é日本🦙", "\x00nul", "a\nb", "x" * 512, "\u2028", " "]),
)
SHORT = st.one_of(st.text(max_size=10), st.sampled_from(["", "y" * 128, 'k"\\']))
COUNT = st.one_of(st.integers(0, 10_000), st.integers(0, MAX_INT), st.just(MAX_INT))
SECONDS = st.one_of(
    st.none(), st.floats(0, 1e300, allow_nan=False, allow_infinity=False), st.just(5e-324)
)
TIMES = st.datetimes(datetime(1971, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC))
OFFSETS = st.sampled_from([None, 0, 330, -480, 14 * 60 - 1])  # minutes east of UTC


@st.composite
def usage_records(draw: st.DrawFn) -> UsageRecord:
    started = draw(TIMES)
    finished = started + timedelta(microseconds=draw(st.integers(0, 10**11)))
    prompt = draw(COUNT)
    first = draw(st.none() | st.just(started + (finished - started) / 3))
    return UsageRecord(
        request_id=f"{next(_counter)}-{draw(TEXT)}"[:512],  # unique in the shared store
        tenant=draw(TEXT),
        model=draw(TEXT),
        started_at=started,
        finished_at=finished,
        status=draw(st.sampled_from(sorted(STATUSES))),
        api_key_id=draw(SHORT),
        pool=draw(SHORT),
        replica=draw(SHORT),
        endpoint=draw(st.sampled_from(["/v1/chat/completions", "/v1/completions", "é"])),
        stream=draw(st.booleans()),
        http_status=draw(st.integers(100, 599)),
        finish_reason=draw(st.none() | SHORT),
        first_token_at=first,
        queue_s=draw(SECONDS),
        prompt_tokens=prompt,
        cached_prompt_tokens=draw(st.integers(0, prompt)),
        completion_tokens=draw(COUNT),
        ttft_s=draw(SECONDS),
        itl_mean_s=draw(SECONDS),
        itl_p50_s=draw(SECONDS),
        itl_max_s=draw(SECONDS),
        e2e_s=draw(SECONDS),
        upstream=draw(st.sampled_from(sorted(UPSTREAM_KINDS))),
        tags=draw(st.dictionaries(st.text(max_size=8), SHORT, max_size=16)),
    )


def batches(max_size: int = 6) -> st.SearchStrategy[list[UsageRecord]]:
    return st.lists(usage_records(), min_size=1, max_size=max_size)


def wire(record: UsageRecord, draw: st.DrawFn) -> dict[str, Any]:
    """One valid wire form of ``record``: timestamps in any offset, defaults left out."""
    out = record.to_json()
    for key in ("started_at", "finished_at", "first_token_at"):
        value = getattr(record, key)
        offset = draw(OFFSETS)
        if value is not None and offset is not None:
            out[key] = value.astimezone(timezone(timedelta(minutes=offset))).isoformat()
    defaults = UsageRecord("x", "x", "x", T0, T0).to_json()
    for key in list(out):
        required = key in ("request_id", "tenant", "model", "started_at", "finished_at")
        if not required and out[key] == defaults[key] and draw(st.booleans()):
            del out[key]
    return out


def stored(store: Store, ids: list[str]) -> list[tuple[Any, ...]]:
    cols = ", ".join(USAGE_SCHEMA.names)
    return store.connection.execute(
        f"SELECT {cols} FROM usage WHERE list_contains(?, request_id) ORDER BY request_id",
        [ids],
    ).fetchall()


def expected(records: list[UsageRecord]) -> list[tuple[Any, ...]]:
    rows = []
    for rec in sorted(records, key=lambda r: r.request_id):
        row = []
        for name in USAGE_SCHEMA.names:
            value = getattr(rec, name)
            if isinstance(value, datetime):
                value = value.astimezone(UTC).replace(tzinfo=None)
            row.append(value)
        rows.append(tuple(row))
    return rows


def arrow_body(rows: list[dict[str, Any]], draw: st.DrawFn) -> bytes:
    """Rows as an Arrow IPC stream the way a client builds one: inferred types, struct tags
    (``Table.from_pylist``) or a map, aware or naive timestamps."""
    as_map = draw(st.booleans())
    for row in rows:
        if as_map:
            row["tags"] = list(row.get("tags", {}).items())
        if draw(st.booleans()):
            for key in ("started_at", "finished_at", "first_token_at"):
                if isinstance(row.get(key), datetime):
                    row[key] = row[key].astimezone(UTC).replace(tzinfo=None)
    if as_map:  # the declared schema
        schema = pa.schema([f for f in USAGE_SCHEMA if f.name in rows[0]])
        table = pa.Table.from_pylist(rows, schema=schema)
    else:  # every type inferred (int64 status codes, struct tags, zoned timestamps)
        table = pa.Table.from_pylist(rows)
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def arrow_rows(records: list[UsageRecord], draw: st.DrawFn) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        row = {name: getattr(rec, name) for name in USAGE_SCHEMA.names}
        offset = draw(OFFSETS)
        if offset is not None:
            tz = timezone(timedelta(minutes=offset))
            for key in ("started_at", "finished_at", "first_token_at"):
                if row[key] is not None:
                    row[key] = row[key].astimezone(tz)
        rows.append(row)
    return rows


def enveloped(records: list[UsageRecord], items: list[Any]) -> list[Any]:
    """Each wire record in its CloudEvents envelope."""
    return [dict(cloudevent(r, "fuzz"), data=item) for r, item in zip(records, items, strict=True)]


def body_for(form: str, records: list[UsageRecord], draw: st.DrawFn) -> tuple[bytes, str]:
    if form == "arrow":
        return arrow_body(arrow_rows(records, draw), draw), ARROW
    items: list[Any] = [wire(r, draw) for r in records]
    if form == "cloudevents":
        items = enveloped(records, items)
        return dumps(items), "application/cloudevents-batch+json"
    return dumps(items), "application/json"


@FUZZ
@given(records=batches(), form=st.sampled_from(["json", "cloudevents", "arrow"]), data=st.data())
def test_valid_records_round_trip(
    shared: Store, records: list[UsageRecord], form: str, data: st.DataObject
) -> None:
    body, content_type = body_for(form, records, data.draw)
    result = Ingestor(shared, lambda: T0.timestamp()).usage(body, content_type)
    assert result.to_json() == {
        "accepted": len(records),
        "duplicates": 0,
        "conflicts": 0,
        "rejected": [],
    }
    assert stored(shared, [r.request_id for r in records]) == expected(records)


# -- one record mutated: (field named, value; None = remove the key) ------------------------
NAN, INF = math.nan, math.inf
JSON_MUTATIONS: list[tuple[str, Any]] = [
    ("request_id", None),
    ("tenant", ""),
    ("model", 7),
    ("tenant", ["t"]),
    ("api_key_id", {"a": 1}),
    ("pool", "p" * 513),
    ("status", "done"),
    ("upstream", "cloud"),
    ("stream", "true"),
    ("stream", 1),
    ("http_status", 99),
    ("http_status", 600),
    ("http_status", "200"),
    ("http_status", 200.0),
    ("prompt_tokens", -1),
    ("prompt_tokens", 2**63),
    ("prompt_tokens", 2**64),
    ("prompt_tokens", 10**30),
    ("completion_tokens", True),
    ("completion_tokens", 1.5),
    ("cached_prompt_tokens", MAX_INT),
    ("queue_s", -0.5),
    ("ttft_s", "0.1"),
    ("e2e_s", False),
    ("finish_reason", 3),
    ("started_at", None),
    ("started_at", "yesterday"),
    ("started_at", "2026-13-40T00:00:00Z"),
    ("started_at", "2026-11-02T00:00:00"),  # no zone
    ("started_at", True),
    ("started_at", 1e20),
    ("started_at", -1e300),
    ("started_at", "0001-01-01T00:00:00+01:00"),
    ("finished_at", "9999-12-31T23:59:59-01:00"),
    ("finished_at", "1970-01-01T00:00:00Z"),  # before started_at
    ("first_token_at", "soon"),
    ("tags", ["a"]),
    ("tags", {str(i): "v" for i in range(17)}),
    ("tags.k", "v" * 129),
    ("tags.k", None),
    ("tags.k", 1),
]


def mutate(item: dict[str, Any], field: str, value: Any) -> None:
    if field.startswith("tags."):
        item["tags"] = {field[5:]: value}
    elif value is None:
        item.pop(field, None)
    else:
        item[field] = value


def mutated_batches(mutations: int) -> st.SearchStrategy[tuple[list[UsageRecord], list[int]]]:
    """Records, and where each mutation goes (a permutation of the first ``mutations``
    positions, the rest stay valid): every mutation is tried in every example."""
    return st.tuples(
        st.lists(usage_records(), min_size=mutations + 1, max_size=mutations + 3),
        st.permutations(range(mutations)),
    )


SLOW = settings(FUZZ, max_examples=20)


@SLOW
@given(batch=mutated_batches(len(JSON_MUTATIONS)), cloudevents=st.booleans(), data=st.data())
def test_mutated_records_are_rejected_alone_with_their_field(
    shared: Store,
    batch: tuple[list[UsageRecord], list[int]],
    cloudevents: bool,
    data: st.DataObject,
) -> None:
    records, where = batch
    items = [wire(r, data.draw) for r in records]
    for (field, value), index in zip(JSON_MUTATIONS, where, strict=True):
        if field == "cached_prompt_tokens":
            items[index]["prompt_tokens"] = 0
        mutate(items[index], field, value)
    if cloudevents:
        items = enveloped(records, items)
    result = Ingestor(shared, lambda: T0.timestamp()).usage(dumps(items))
    want = sorted((index, field) for (field, _), index in zip(JSON_MUTATIONS, where, strict=True))
    assert [(r["index"], r["field"]) for r in result.rejected] == want
    good = [r for i, r in enumerate(records) if i >= len(JSON_MUTATIONS)]
    assert result.accepted == len(good)
    assert stored(shared, [r.request_id for r in records]) == expected(good)
    letters = shared.connection.execute(  # this batch's dead letters are the newest
        "SELECT batch_index, field FROM dead_letter ORDER BY id DESC LIMIT ?", [len(want)]
    ).fetchall()
    assert sorted(letters) == want


@pytest.mark.parametrize("mutation", JSON_MUTATIONS, ids=lambda m: str(m)[:40])
@settings(FUZZ, max_examples=2)
@given(records=batches(), pick=st.integers(0, 10**6))
def test_one_bad_record_takes_nothing_else_down(
    shared: Store, records: list[UsageRecord], pick: int, mutation: tuple[str, Any]
) -> None:
    """Alone in a batch of good ones (so the vectorised checks see it first)."""
    index = pick % len(records)
    items = [r.to_json() for r in records]
    if mutation[0] == "cached_prompt_tokens":
        items[index]["prompt_tokens"] = 0
    mutate(items[index], *mutation)
    result = Ingestor(shared, lambda: T0.timestamp()).usage(dumps(items))
    assert [(r["index"], r["field"]) for r in result.rejected] == [(index, mutation[0])]
    good = [r for i, r in enumerate(records) if i != index]
    assert stored(shared, [r.request_id for r in records]) == expected(good)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"])
@settings(FUZZ, max_examples=3)
@given(records=batches(), field=st.sampled_from(["queue_s", "ttft_s", "e2e_s"]))
def test_non_finite_json_numbers_are_never_stored(
    shared: Store, records: list[UsageRecord], field: str, literal: bytes
) -> None:
    """Not JSON (NaN, Infinity) or past a double (1e999): DuckDB's reader takes them, the
    checks must not; the batch is refused as a body (orjson cannot read it)."""
    items = [r.to_json() for r in records]
    items[0][field] = 12345.678
    body = dumps(items).replace(b"12345.678", literal, 1)
    with pytest.raises(BatchError) as caught:
        Ingestor(shared, lambda: T0.timestamp()).usage(body)
    assert caught.value.field == "body"
    assert stored(shared, [r.request_id for r in records]) == []


ARROW_MUTATIONS: list[tuple[str, Any]] = [
    ("request_id", None),
    ("tenant", ""),
    ("model", "m" * 513),
    ("status", "done"),
    ("http_status", 700),
    ("prompt_tokens", -5),
    ("queue_s", NAN),
    ("ttft_s", INF),
    ("e2e_s", -1.0),
    ("started_at", None),
    ("finished_at", datetime(1970, 1, 1, tzinfo=UTC)),
    ("tags", {str(i): "v" for i in range(17)}),
]


@SLOW
@given(batch=mutated_batches(len(ARROW_MUTATIONS)), data=st.data())
def test_mutated_arrow_rows_are_rejected_alone_with_their_field(
    shared: Store, batch: tuple[list[UsageRecord], list[int]], data: st.DataObject
) -> None:
    records, where = batch
    rows = arrow_rows(records, data.draw)
    for (field, value), index in zip(ARROW_MUTATIONS, where, strict=True):
        rows[index][field] = value
    result = Ingestor(shared, lambda: T0.timestamp()).usage(arrow_body(rows, data.draw), ARROW)
    want = sorted((index, field) for (field, _), index in zip(ARROW_MUTATIONS, where, strict=True))
    assert [(r["index"], r["field"]) for r in result.rejected] == want
    good = [r for i, r in enumerate(records) if i >= len(ARROW_MUTATIONS)]
    assert stored(shared, [r.request_id for r in records]) == expected(good)


def test_arrow_times_past_year_9999_are_rejected_per_row(shared: Store) -> None:
    """Arrow holds instants Python cannot (years past 9999): refused at their row, by name."""
    micros = [1_800_000_000_000_000, 253_402_300_800_000_000 + 3_600_000_000]
    table = pa.table(
        {
            "request_id": [f"y10k-{next(_counter)}", f"y10k-{next(_counter)}"],
            "tenant": ["t", "t"],
            "model": ["m", "m"],
            "started_at": pa.array(micros, pa.int64()).cast(pa.timestamp("us")),
            "finished_at": pa.array(micros, pa.int64()).cast(pa.timestamp("us")),
        }
    )
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    result = Ingestor(shared, lambda: T0.timestamp()).usage(sink.getvalue().to_pybytes(), ARROW)
    assert (result.accepted, [(r["index"], r["field"]) for r in result.rejected]) == (
        1,
        [(1, "started_at")],
    )


# -- GPU samples ----------------------------------------------------------------------------
@st.composite
def gpu_samples(draw: st.DrawFn) -> GpuSample:
    number = st.floats(0, 1e12, allow_nan=False, allow_infinity=False)
    return GpuSample(
        ts=draw(TIMES),
        node=draw(TEXT),
        gpu_uuid=f"GPU-{next(_counter)}",
        gpu_model=draw(TEXT),
        mig_uuid=draw(SHORT),
        mig_profile=draw(SHORT),
        replica=draw(SHORT),
        util_pct=draw(st.floats(0, 100)),
        mem_used_bytes=draw(COUNT),
        mem_total_bytes=draw(COUNT),
        power_w=draw(number),
        energy_j=draw(number),
        temp_c=draw(number),
        sm_clock_mhz=draw(number),
    )


SAMPLE_MUTATIONS: list[tuple[str, Any]] = [
    ("node", None),
    ("gpu_uuid", ""),
    ("gpu_model", 3),
    ("ts", "now"),
    ("ts", 1e20),
    ("ts", "0001-01-01T00:00:00+01:00"),
    ("util_pct", 101),
    ("util_pct", -1),
    ("power_w", "1"),
    ("mem_used_bytes", 2**63),
    ("mem_total_bytes", 1.5),
    ("energy_j", True),
]


def stored_samples(store: Store, uuids: list[str]) -> list[tuple[Any, ...]]:
    cols = ", ".join(SAMPLE_SCHEMA.names)
    return store.connection.execute(
        f"SELECT {cols} FROM gpu_samples WHERE list_contains(?, gpu_uuid) ORDER BY gpu_uuid",
        [uuids],
    ).fetchall()


def expected_samples(samples: list[GpuSample]) -> list[tuple[Any, ...]]:
    rows = []
    for s in sorted(samples, key=lambda s: s.gpu_uuid):
        values = [getattr(s, name) for name in SAMPLE_SCHEMA.names]
        values[0] = s.ts.astimezone(UTC).replace(tzinfo=None)
        rows.append(tuple(values))
    return rows


@FUZZ
@given(
    samples=st.lists(gpu_samples(), min_size=1, max_size=6),
    form=st.sampled_from(["json", "arrow"]),
    mutation=st.none() | st.sampled_from(SAMPLE_MUTATIONS),
    pick=st.integers(0, 10**6),
)
def test_gpu_samples_round_trip_and_mutations_are_named(
    shared: Store,
    samples: list[GpuSample],
    form: str,
    mutation: tuple[str, Any] | None,
    pick: int,
) -> None:
    index = pick % len(samples)
    items = [s.to_json() for s in samples]
    if mutation is not None:
        mutate(items[index], *mutation)
    if form == "arrow":
        if mutation is not None:
            return  # Arrow columns are typed: covered by the JSON form
        rows = [{n: getattr(s, n) for n in SAMPLE_SCHEMA.names} for s in samples]
        table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        body, content_type = sink.getvalue().to_pybytes(), ARROW
    else:
        body, content_type = dumps(items), "application/json"
    result = Ingestor(shared, lambda: T0.timestamp()).gpu_samples(body, content_type)
    uuids = [s.gpu_uuid for s in samples]
    if mutation is None:
        assert (result.accepted, result.rejected) == (len(samples), [])
        assert stored_samples(shared, uuids) == expected_samples(samples)
    else:
        assert [(r["index"], r["field"]) for r in result.rejected] == [(index, mutation[0])]
        good = [s for i, s in enumerate(samples) if i != index]
        assert stored_samples(shared, uuids) == expected_samples(good)


# -- garbage --------------------------------------------------------------------------------
FIELDS = [*USAGE_SCHEMA.names, "specversion", "type", "data", "ts", "node", "gpu_uuid"]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(["2026-11-02T00:00:00Z", "infermeter.inference.v1", "1.0", "ok"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)
RECORDISH = st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=12)
GARBAGE = st.one_of(
    st.binary(max_size=200),
    JSON_VALUES.map(dumps),
    st.lists(RECORDISH | JSON_VALUES, max_size=5).map(dumps),
    st.sampled_from(
        [
            b"",
            b" ",
            b"\x80",
            b"[NaN]",
            b'[{"queue_s": Infinity}]',
            b'[{"queue_s": NaN, "tenant": "t"}]',
            b'[{"queue_s": 1e400}]',  # valid JSON; orjson cannot hold it: a body error
            b'[{"prompt_tokens": 1' + b"0" * 400 + b"}]",
            b'[{"request_id": "\\ud800"}]',
        ]
    ),
)


@FUZZ
@given(body=GARBAGE, kind=st.sampled_from(["usage", "gpu_samples"]), arrow=st.booleans())
def test_garbage_is_a_batch_error_or_per_record_rejections(
    shared: Store, body: bytes, kind: str, arrow: bool
) -> None:
    ingestor = Ingestor(shared, lambda: T0.timestamp())
    read = ingestor.usage if kind == "usage" else ingestor.gpu_samples
    try:
        result = read(body, ARROW if arrow else "application/json")
    except BatchError as exc:
        assert exc.field
        return
    assert all(isinstance(r["field"], str) and r["field"] for r in result.rejected)
    assert result.accepted + result.duplicates + len(result.rejected) >= 0
