"""Columnar forms of the contracts: the Arrow schemas of usage records and GPU samples, the
conversion of validated records into Arrow tables (timestamps as naive UTC microseconds, the
form DuckDB stores), and the reading of Arrow IPC bodies into those schemas."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from infermeter.kernel.records import GpuSample, UsageRecord
from infermeter.metering.errors import BatchError

TS = pa.timestamp("us")
TS_UTC = pa.timestamp("us", tz="UTC")
TAGS = pa.map_(pa.string(), pa.string())

USAGE_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("tenant", pa.string()),
        ("api_key_id", pa.string()),
        ("model", pa.string()),
        ("pool", pa.string()),
        ("replica", pa.string()),
        ("endpoint", pa.string()),
        ("stream", pa.bool_()),
        ("status", pa.string()),
        ("http_status", pa.int32()),
        ("finish_reason", pa.string()),
        ("started_at", TS),
        ("first_token_at", TS),
        ("finished_at", TS),
        ("queue_s", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("cached_prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("ttft_s", pa.float64()),
        ("itl_mean_s", pa.float64()),
        ("itl_p50_s", pa.float64()),
        ("itl_max_s", pa.float64()),
        ("e2e_s", pa.float64()),
        ("upstream", pa.string()),
        ("tags", TAGS),
    ]
)
USAGE_REQUIRED = ("request_id", "tenant", "model", "started_at", "finished_at")
TIMESTAMP_COLUMNS = frozenset({"started_at", "first_token_at", "finished_at", "ts"})

SAMPLE_SCHEMA = pa.schema(
    [
        ("ts", TS),
        ("node", pa.string()),
        ("gpu_uuid", pa.string()),
        ("mig_uuid", pa.string()),
        ("gpu_model", pa.string()),
        ("mig_profile", pa.string()),
        ("replica", pa.string()),
        ("util_pct", pa.float64()),
        ("mem_used_bytes", pa.int64()),
        ("mem_total_bytes", pa.int64()),
        ("power_w", pa.float64()),
        ("energy_j", pa.float64()),
        ("temp_c", pa.float64()),
        ("sm_clock_mhz", pa.float64()),
    ]
)


def naive_utc(value: datetime | None) -> datetime | None:
    """An aware datetime as naive UTC (DuckDB TIMESTAMP); None stays None."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None)


def usage_table(records: Sequence[UsageRecord]) -> pa.Table:
    """Validated usage records as an Arrow table with :data:`USAGE_SCHEMA`."""
    columns: dict[str, list[object]] = {name: [] for name in USAGE_SCHEMA.names}
    for record in records:
        for name in USAGE_SCHEMA.names:
            value = getattr(record, name)
            if name in TIMESTAMP_COLUMNS:
                value = naive_utc(value)
            elif name == "tags":
                value = list(value.items())
            columns[name].append(value)
    return pa.table(columns, schema=USAGE_SCHEMA)


def sample_table(samples: Sequence[GpuSample]) -> pa.Table:
    """Validated GPU samples as an Arrow table with :data:`SAMPLE_SCHEMA`."""
    columns: dict[str, list[object]] = {name: [] for name in SAMPLE_SCHEMA.names}
    for sample in samples:
        for name in SAMPLE_SCHEMA.names:
            value = getattr(sample, name)
            columns[name].append(naive_utc(value) if name == "ts" else value)
    return pa.table(columns, schema=SAMPLE_SCHEMA)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _aware(micros: int | None) -> object:
    """Microseconds since the epoch as an aware datetime; past what Python holds (years 1 to
    9999), a string that the record parser refuses, naming the column."""
    if micros is None:
        return None
    try:
        return _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        return f"{micros} us since the epoch (out of range)"


def records_from_arrow(table: pa.Table) -> list[dict[str, object]]:
    """Rows of an Arrow batch (timestamps naive UTC, as :func:`read_arrow` casts them) as
    wire-form dicts (for the per-record validation path)."""
    times = [name for name in table.column_names if name in TIMESTAMP_COLUMNS]
    micros = {name: table.column(name).cast(pa.int64()).to_pylist() for name in times}
    rows = table.drop_columns(times).to_pylist()
    for i, row in enumerate(rows):
        for name in times:
            row[name] = _aware(micros[name][i])
        tags = row.get("tags")
        if isinstance(tags, list):
            row["tags"] = dict(tags)
    return rows


def read_arrow(body: bytes, schema: pa.Schema, required: tuple[str, ...]) -> pa.Table:
    """An Arrow IPC stream (or file) as a table with ``schema``: columns cast, timestamps as
    naive UTC, struct tags as a map; a missing optional column is all nulls. Raises
    :class:`BatchError` naming the body or the column that cannot be read."""
    try:
        reader = ipc.open_stream(pa.py_buffer(body))
        table = reader.read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        try:
            table = ipc.open_file(pa.py_buffer(body)).read_all()
        except (pa.ArrowInvalid, OSError):
            raise BatchError("body", f"not an Arrow IPC stream: {exc}") from exc
    out = []
    for target in schema:
        name = target.name
        if name not in table.column_names:
            if name in required:
                raise BatchError(name, "column is required")
            out.append(pa.nulls(table.num_rows, target.type))
            continue
        col = table.column(name)
        try:
            if pa.types.is_timestamp(target.type) and pa.types.is_timestamp(col.type):
                if col.type.tz is not None:
                    col = col.cast(TS_UTC)
                col = col.cast(pa.timestamp("us", tz=None)) if col.type.tz is None else col
                col = pa.chunked_array(
                    [c.cast(pa.int64()).cast(target.type) for c in col.chunks], target.type
                )
            elif pa.types.is_map(target.type) and pa.types.is_struct(col.type):
                col = struct_to_map(col)
            else:
                col = col.cast(target.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError) as exc:
            raise BatchError(name, f"cannot be read as {target.type}: {exc}") from exc
        out.append(col)
    return pa.Table.from_arrays(out, schema=schema)


def struct_to_map(col: pa.ChunkedArray) -> pa.Array:
    """Tags written as a struct column (e.g. ``Table.from_pylist``) as map<string, string>:
    one entry per non-null field, in field order; a null struct is a null map."""
    struct = col.combine_chunks()
    if isinstance(struct, pa.ChunkedArray):  # no chunks at all
        struct = pa.array([], struct.type)
    names = [f.name for f in struct.type]
    for f in struct.type:
        if not (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)):
            raise TypeError(f"tag {f.name!r} is {f.type}, not a string")
    n, k = len(struct), len(names)
    fields = [a.cast(pa.string()) for a in struct.flatten()]
    if k == 0:
        offsets = pa.array(np.zeros(n + 1, np.int32))
        empty = pa.array([], pa.string())
        return pa.MapArray.from_arrays(offsets, empty, empty, mask=struct.is_null())
    # row-major interleave: row i's fields at i*k .. i*k+k-1
    order = (np.arange(n)[:, None] + np.arange(k)[None, :] * n).ravel()
    values = pa.concat_arrays(fields).take(pa.array(order))
    present = np.asarray(values.is_valid())
    counts = present.reshape(n, k).sum(axis=1)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    keys = pa.array(np.tile(np.array(names, dtype=object), n)[present], pa.string())
    items = values.filter(pa.array(present))
    return pa.MapArray.from_arrays(pa.array(offsets), keys, items, mask=struct.is_null())
