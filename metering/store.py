"""The metering store: one DuckDB database chosen by URI, with numbered migrations.

URIs (a scheme registry, so DuckLake can be added without touching callers):

- ``duckdb:///relative/or/absolute/path.duckdb`` — a file (its directory is created);
- ``duckdb:///:memory:`` — an in-memory database (tests).

The metering service is the only writer of its file. Every request thread takes its own
cursor (:meth:`Store.cursor`); DuckDB's MVCC lets ingest and allocation commit concurrently
as long as they touch different rows. Schema changes are ``migrations/NNN_name.sql`` files,
applied in order at start, each in one transaction, and recorded in ``schema_migrations``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

import duckdb

from infermeter.metering.errors import StorageError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
CHECKPOINT_THRESHOLD = "512MB"
_MIGRATION = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


class Store:
    """A DuckDB connection plus the facts callers need about it."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, uri: str, path: str = "") -> None:
        self.connection = connection
        self.uri = uri
        self.path = path
        self.lock = threading.Lock()
        # Held by ingest from its duplicate check to its commit: usage batches commit one at a time.
        self.usage_lock = threading.Lock()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for the calling thread (its own transaction scope)."""
        with self.lock:
            return self.connection.cursor()

    def fatal_error(self) -> str:
        """The fatal error that invalidated the database ("" while it is usable).

        After a fatal error (e.g. a checkpoint that the disk refused) DuckDB answers every
        query with ``FatalException`` until the process restarts; transient errors (a
        commit refused for lack of space, which DuckDB rolls back) are not fatal."""
        try:
            cur = self.cursor()
            try:
                cur.execute("SELECT 1").fetchone()
            finally:
                cur.close()
        except duckdb.FatalException as exc:
            return " ".join(str(exc).split("Stack Trace:", 1)[0].split())
        except duckdb.Error:
            return ""
        return ""

    def size_bytes(self) -> int:
        """Bytes the database file (and its WAL) takes on disk; 0 in memory."""
        if not self.path:
            return 0
        total = 0
        for candidate in (Path(self.path), Path(self.path + ".wal")):
            if candidate.exists():
                total += candidate.stat().st_size
        return total

    def close(self) -> None:
        """Checkpoint and close."""
        self.connection.close()


def _open_duckdb(rest: str, uri: str) -> Store:
    target = rest[1:] if rest.startswith("/") else rest
    if target in ("", ":memory:"):
        return Store(duckdb.connect(":memory:"), uri)
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path))
    except duckdb.Error as exc:
        raise StorageError(f"cannot open {path}: {exc}") from exc
    return Store(con, uri, str(path))


OPENERS: dict[str, Callable[[str, str], Store]] = {"duckdb": _open_duckdb}


def open_store(uri: str, *, migrate: bool = True) -> Store:
    """Open the store named by ``uri`` and apply pending migrations."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in OPENERS:
        raise StorageError(
            f"unsupported storage URI {uri!r}: use duckdb:///path/file.duckdb or duckdb:///:memory:"
        )
    store = OPENERS[scheme](rest, uri)
    store.connection.execute("SET TimeZone = 'UTC'")
    if store.path:
        # Commits are durable in the WAL (large ingest batches write their row groups to the
        # file at commit); checkpoint (compressing what the WAL holds) only once it holds this
        # much, not after every batch.
        store.connection.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
    if migrate:
        apply_migrations(store.connection)
    return store


def migrations() -> list[tuple[int, str, str]]:
    """``(version, file name, sql)`` of every migration, in order."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = _MIGRATION.match(path.name)
        if not match:
            raise StorageError(f"migration file name must be NNN_name.sql: {path.name}")
        found.append((int(match.group(1)), path.name, path.read_text(encoding="utf-8")))
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise StorageError(f"migrations must be numbered 001, 002, ... without gaps: {versions}")
    return found


def apply_migrations(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply every migration not yet recorded; returns the versions applied now."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    applied = []
    for version, name, sql in migrations():
        if version in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, now()::TIMESTAMP)", [version, name]
            )
            con.execute("COMMIT")
        except duckdb.Error as exc:
            con.execute("ROLLBACK")
            raise StorageError(f"migration {name} failed: {exc}") from exc
        applied.append(version)
    return applied
