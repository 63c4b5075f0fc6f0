"""Columnar forms of the contracts: the Arrow schemas of usage records and GPU samples, and
the conversion of validated records into Arrow tables (timestamps as naive UTC microseconds,
the form DuckDB stores)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pyarrow as pa

from metering.contracts import GpuSample, UsageRecord

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


def records_from_arrow(table: pa.Table) -> list[dict[str, object]]:
    """Rows of an Arrow batch as wire-form dicts (for the per-record validation path)."""
    rows = table.to_pylist()
    for row in rows:
        for name in TIMESTAMP_COLUMNS & row.keys():
            value = row[name]
            if isinstance(value, datetime) and value.tzinfo is None:
                row[name] = value.replace(tzinfo=UTC)
        tags = row.get("tags")
        if isinstance(tags, list):
            row["tags"] = dict(tags)
    return rows
