"""Batch ingest of usage records and GPU samples: idempotent, transactional, per-record errors.

Three body formats: a JSON array of records, a CloudEvents JSON batch (the records in each
event's ``data``) and an Arrow IPC stream. A JSON body goes to DuckDB's own JSON reader and an
Arrow body is registered as it is; every row is then validated with vectorised SQL
(``sql/ingest.sql``). When any row is invalid or an id repeats inside the batch, the batch takes
the per-record path (:func:`infermeter.kernel.records.parse_usage_record`), which names each bad
record's index and field. Both paths store the good records and dead-letter the bad ones in one
transaction: a crash leaves all of a batch or none of it.

Usage ids are kept unique by ingest (migration 005 dropped the ``request_id`` primary key,
whose index cost more than the rest of the insert): a batch's ids are looked up among the
stored rows started within the batch's ``started_at`` range (a re-sent record carries its
original ``started_at``; zone maps skip the other row groups), and the lookup, the insert and
the commit hold the store's usage lock, so an id counts as seen exactly when the transaction
that stores it commits and a failed write never marks an id as done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from infermeter.kernel.records import (
    GpuSample,
    UsageRecord,
    parse_gpu_sample,
    parse_usage_record,
    unwrap_event,
)
from infermeter.metering import columns
from infermeter.metering.errors import BatchError, RecordError, StorageError
from infermeter.metering.sql_files import bind, query
from infermeter.metering.store import Store

log = logging.getLogger(__name__)

ARROW_TYPES = ("application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.file")
MAX_PAYLOAD_CHARS = 65_536
_SPOOL_DIR = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


@dataclass(slots=True)
class IngestResult:
    """What happened to one batch: stored, already known, and rejected records."""

    accepted: int = 0
    duplicates: int = 0  # of which ``conflicts`` carried other content than the stored record
    rejected: list[dict[str, Any]] = field(default_factory=list)
    conflicts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "rejected": self.rejected,
        }


@dataclass(slots=True)
class KindCounters:
    received: int = 0
    stored: int = 0
    duplicate: int = 0
    conflict: int = 0
    dead_lettered: int = 0
    batches: int = 0
    batches_failed: int = 0
    fast_path_batches: int = 0
    bytes: int = 0


class IngestStats:
    """Process-wide ingest counters (exported on ``/metrics``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kinds = {"usage": KindCounters(), "gpu_samples": KindCounters()}

    def add(self, kind: str, result: IngestResult, received: int, nbytes: int, fast: bool) -> None:
        with self.lock:
            c = self.kinds[kind]
            c.received += received
            c.stored += result.accepted
            c.duplicate += result.duplicates
            c.conflict += result.conflicts
            c.dead_lettered += len(result.rejected)
            c.batches += 1
            c.fast_path_batches += int(fast)
            c.bytes += nbytes

    def failed(self, kind: str) -> None:
        with self.lock:
            self.kinds[kind].batches_failed += 1


def _now_naive(now: Callable[[], float]) -> datetime:
    return datetime.fromtimestamp(now(), tz=UTC).replace(tzinfo=None)


def _dead_letter_table(kind: str, rejected: list[tuple[int, str, str, str]]) -> pa.Table:
    return pa.table(
        {
            "kind": [kind] * len(rejected),
            "batch_index": [r[0] for r in rejected],
            "field": [r[1] for r in rejected],
            "error": [r[2] for r in rejected],
            "payload": [r[3] for r in rejected],
        },
        schema=pa.schema(
            [
                ("kind", pa.string()),
                ("batch_index", pa.int32()),
                ("field", pa.string()),
                ("error", pa.string()),
                ("payload", pa.string()),
            ]
        ),
    )


def _payload(obj: Any) -> str:
    try:
        text = orjson.dumps(obj, default=str).decode()
    except TypeError:
        text = repr(obj)
    return text[:MAX_PAYLOAD_CHARS]


def _require_body(body: bytes) -> None:
    """An empty body is an error on both ingest routes (``[]`` is the empty batch)."""
    if not body.strip():
        raise BatchError("body", "is empty: send a JSON array ([] for none) or an Arrow stream")


def _json_items(body: bytes) -> list[Any]:
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BatchError("body", f"not valid JSON: {exc}") from exc
    if not isinstance(items, list):
        raise BatchError("body", "must be a JSON array of records or of CloudEvents")
    return items


@dataclass(slots=True, frozen=True)
class _Summary:
    rows: int
    bad: int
    ids: int
    lo: datetime | None
    hi: datetime | None


def _stage_arrow(cur: duckdb.DuckDBPyConnection, table: pa.Table) -> None:
    cur.register("usage_arrow", table)
    cur.execute(query("ingest", "batch_from_arrow"))
    cur.execute(query("ingest", "checks_from_arrow"))


def _summary(cur: duckdb.DuckDBPyConnection) -> _Summary:
    row = cur.execute(query("ingest", "batch_summary")).fetchone()
    assert row is not None
    return _Summary(int(row[0]), int(row[1]), int(row[2]), row[3], row[4])


def _clean_summary(cur: duckdb.DuckDBPyConnection) -> _Summary | None:
    """The batch's summary when every row is valid and no id repeats in it, else None."""
    summary = _summary(cur)
    return summary if summary.bad == 0 and summary.ids == summary.rows else None


def _run(cur: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any]) -> int:
    sql = query("ingest", name)
    row = cur.execute(sql, bind(sql, params)).fetchone()
    return int(row[0]) if row else 0


Letter = tuple[int, str, str, str]  # batch index (-1: unknown), field, error, payload


def _insert_usage(
    cur: duckdb.DuckDBPyConnection, params: dict[str, Any], rows: int, conflicts: list[Letter]
) -> int:
    """Insert the batch's new rows; the stored ids that came back with other content are
    appended to ``conflicts`` (checked only when the batch has stored ids at all)."""
    if rows == 0:
        return 0
    if _run(cur, "stored_duplicates", params) == 0:
        return _run(cur, "insert_usage", params)
    sql = query("ingest", "conflicting_duplicates")
    for _rid, payload, error in cur.execute(sql, bind(sql, params)).fetchall():
        conflicts.append((-1, "request_id", str(error), str(payload)[:MAX_PAYLOAD_CHARS]))
    return _run(cur, "insert_usage_new", params)


class Ingestor:
    """Stores batches into a :class:`Store`; ``now`` is injected for received_at."""

    def __init__(
        self, store: Store, now: Callable[[], float], stats: IngestStats | None = None
    ) -> None:
        self.store = store
        self.now = now
        self.stats = stats or IngestStats()

    # -- usage records ---------------------------------------------------------------------
    def usage(self, body: bytes, content_type: str = "application/json") -> IngestResult:
        """Ingest one batch of usage records; raises :class:`BatchError` for unreadable bodies."""
        try:
            result, received, fast = self._usage(body, content_type)
        except Exception:
            self.stats.failed("usage")
            raise
        self.stats.add("usage", result, received, len(body), fast)
        return result

    def _usage(self, body: bytes, content_type: str) -> tuple[IngestResult, int, bool]:
        _require_body(body)
        cur = self.store.cursor()
        try:
            if content_type.split(";")[0].strip().lower() in ARROW_TYPES:
                table = columns.read_arrow(body, columns.USAGE_SCHEMA, columns.USAGE_REQUIRED)
                _stage_arrow(cur, table)
                summary = _clean_summary(cur)
                if summary is not None:
                    return self._commit_usage(cur, summary, []), table.num_rows, True
                items = columns.records_from_arrow(table)
            else:
                summary = _clean_summary(cur) if self._stage_json(cur, body) else None
                if summary is not None:
                    return self._commit_usage(cur, summary, []), summary.rows, True
                items = _json_items(body)
            return self._usage_slow(cur, items), len(items), False
        finally:
            with contextlib.suppress(duckdb.Error):
                cur.unregister("usage_arrow")
            cur.close()

    def _stage_json(self, cur: duckdb.DuckDBPyConnection, body: bytes) -> bool:
        with tempfile.NamedTemporaryFile(
            dir=_SPOOL_DIR, prefix="infermeter-batch-", suffix=".json"
        ) as spool:
            spool.write(body)
            spool.flush()
            try:
                cur.execute(query("ingest", "stage_usage_json"), {"path": spool.name})
            except (duckdb.Error, UnicodeDecodeError):  # DuckDB's message quotes bad bytes
                return False
        cur.execute(query("ingest", "batch_from_json"))
        cur.execute(query("ingest", "checks_from_json"))
        return True

    def _usage_slow(self, cur: duckdb.DuckDBPyConnection, items: list[Any]) -> IngestResult:
        good: list[UsageRecord] = []
        seen: dict[str, UsageRecord] = {}
        dead: list[Letter] = []
        conflicts: list[Letter] = []
        in_batch_dups = 0
        for index, item in enumerate(items):
            try:
                record = parse_usage_record(unwrap_event(item))
            except RecordError as exc:
                dead.append((index, exc.field, exc.message, _payload(item)))
                continue
            first = seen.get(record.request_id)
            if first is not None:
                in_batch_dups += 1
                if first != record:
                    error = "conflict: id repeated in the batch for another request"
                    conflicts.append((index, "request_id", error, _payload(item)))
                continue
            seen[record.request_id] = record
            good.append(record)
        _stage_arrow(cur, columns.usage_table(good))
        summary = _summary(cur)
        result = self._commit_usage(cur, summary, dead, conflicts)
        result.duplicates += in_batch_dups
        return result

    def _commit_usage(
        self,
        cur: duckdb.DuckDBPyConnection,
        batch: _Summary,
        dead: list[Letter],
        conflicts: list[Letter] | None = None,
    ) -> IngestResult:
        """Store every row of ``usage_batch`` whose id is not stored yet, and the dead letters.

        The ids already stored are found among the rows started in the batch's time range;
        the check, the insert and the commit hold the store's usage lock, so no other batch
        commits in between and an id counts as seen exactly when its transaction commits."""
        params = {"now": _now_naive(self.now), "lo": batch.lo, "hi": batch.hi}
        clashes = list(conflicts or [])
        letters = list(dead)

        def insert() -> int:
            stored_before = len(clashes)
            inserted = _insert_usage(cur, params, batch.rows, clashes)
            letters.extend(clashes)  # the conflicts are dead-lettered in the same transaction
            if len(clashes) > stored_before:
                log.warning("usage batch: %d ids stored for another request (dead-lettered)",
                            len(clashes) - stored_before)  # fmt: skip
            return inserted

        with self.store.usage_lock:
            inserted = self._transaction(cur, "usage", insert, letters, params)
        return IngestResult(
            accepted=inserted,
            duplicates=batch.rows - inserted,
            rejected=[{"index": i, "field": f, "error": e} for i, f, e, _ in dead],
            conflicts=len(clashes),
        )

    @staticmethod
    def _transaction(
        cur: duckdb.DuckDBPyConnection,
        kind: str,
        insert: Callable[[], int],
        dead: list[Letter],
        params: dict[str, Any],
    ) -> int:
        try:
            cur.execute("BEGIN TRANSACTION")
            inserted = insert()
            if dead:
                cur.register("dead_letter_arrow", _dead_letter_table(kind, dead))
                sql = query("ingest", "insert_dead_letter")
                cur.execute(sql, bind(sql, params))
            cur.execute("COMMIT")
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                cur.execute("ROLLBACK")
            raise StorageError(f"{kind} batch not stored: {exc}") from exc
        return inserted

    # -- GPU samples -----------------------------------------------------------------------
    def gpu_samples(self, body: bytes, content_type: str = "application/json") -> IngestResult:
        """Ingest one batch of GPU samples (key ``(node, gpu_uuid, mig_uuid, ts)``)."""
        try:
            _require_body(body)
            if content_type.split(";")[0].strip().lower() in ARROW_TYPES:
                table = columns.read_arrow(body, columns.SAMPLE_SCHEMA, ("ts", "node", "gpu_uuid"))
                items: list[Any] = columns.records_from_arrow(table)
            else:
                items = _json_items(body)
            result = self._samples(items)
        except Exception:
            self.stats.failed("gpu_samples")
            raise
        self.stats.add("gpu_samples", result, len(items), len(body), False)
        return result

    def _samples(self, items: list[Any]) -> IngestResult:
        good: list[GpuSample] = []
        seen: set[tuple[str, str, str, datetime]] = set()
        dead: list[tuple[int, str, str, str]] = []
        dups = 0
        for index, item in enumerate(items):
            try:
                sample = parse_gpu_sample(unwrap_event(item))
            except RecordError as exc:
                dead.append((index, exc.field, exc.message, _payload(item)))
                continue
            if sample.key() in seen:
                dups += 1
                continue
            seen.add(sample.key())
            good.append(sample)
        cur = self.store.cursor()
        try:
            cur.register("samples_arrow", columns.sample_table(good))
            params = {"now": _now_naive(self.now)}
            inserted = self._transaction(
                cur, "gpu_samples", lambda: _run(cur, "insert_samples", params), dead, params
            )
        finally:
            cur.close()
        return IngestResult(
            accepted=inserted,
            duplicates=len(good) - inserted + dups,
            rejected=[{"index": i, "field": f, "error": e} for i, f, e, _ in dead],
        )
