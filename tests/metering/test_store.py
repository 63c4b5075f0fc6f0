"""Store URIs and numbered migrations."""

from __future__ import annotations

from pathlib import Path

import pytest

from metering.errors import StorageError
from metering.store import apply_migrations, migrations, open_store


def test_migrations_are_numbered_and_applied_once(tmp_path: Path) -> None:
    versions = [v for v, _, _ in migrations()]
    assert versions == list(range(1, len(versions) + 1))
    uri = f"duckdb:///{tmp_path}/m.duckdb"
    store = open_store(uri)
    applied = store.connection.execute(
        "SELECT version FROM schema_migrations ORDER BY 1"
    ).fetchall()
    assert [a[0] for a in applied] == versions
    assert apply_migrations(store.connection) == []
    store.close()
    again = open_store(uri)
    assert again.connection.execute("SELECT count(*) FROM schema_migrations").fetchone() == (
        len(versions),
    )
    assert again.size_bytes() > 0
    again.close()


@pytest.mark.parametrize("uri", ["sqlite:///x.db", "postgres://x", "duckdb:x"])
def test_unsupported_uri(uri: str) -> None:
    with pytest.raises(StorageError):
        open_store(uri)
