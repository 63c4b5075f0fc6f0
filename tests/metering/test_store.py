"""Store URIs and numbered migrations."""

from __future__ import annotations

from pathlib import Path

import pytest

from infermeter.metering.errors import StorageError
from infermeter.metering.store import apply_migrations, migrations, open_store
from tests.metering.conftest import database_before


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


def test_migration_004_carries_allocation_results_over(tmp_path: Path) -> None:
    con = database_before(str(tmp_path / "v3.duckdb"), 4)
    hour = "TIMESTAMP '2026-11-01 10:00:00'"
    sh = "'self_hosted'"
    # old cost_hourly: keyed by feature and API key too; two replicas, one managed row
    con.execute(
        f"""INSERT INTO cost_hourly VALUES
        ({hour}, 'r1', 'p', 'acme', 'llama', 'chat', 'k1', {sh}, 600, 2, 10, 0, 5, 1.5, 3.0),
        ({hour}, 'r1', 'p', 'acme', 'llama', 'search', 'k1', {sh}, 400, 1, 20, 0, 7, 0.5, 1.0),
        ({hour}, 'r2', 'p', 'acme', 'llama', 'chat', 'k2', {sh}, 1000, 3, 30, 5, 9, 2.0, 0.0),
        ({hour}, '', '', 'acme', 'gpt-4o-mini', 'chat', 'k1', 'managed', 70, 1, 40, 0, 11, 0, 0)"""
    )  # fmt: skip
    con.execute(
        f"INSERT INTO replica_hourly VALUES ({hour}, 'r1', 'p', 3000, 1000, 2000, 1, 3600, 3600,"
        f" 0), ({hour}, 'r2', 'p', 2000, 1000, 1000, 1, 3600, 3600, 0)"
    )
    con.execute(
        f"INSERT INTO request_window VALUES ('q1', {hour}, 'r1', 'acme', 600, 1, 1, 1, 1, 1)"
    )
    assert apply_migrations(con) == [v for v, _, _ in migrations() if v >= 4]
    tables = {
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    assert "request_window" not in tables
    hourly = con.execute(
        "SELECT replica, sum(cost_micro), sum(requests) FROM cost_hourly GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert hourly == [("", 70, 1), ("r1", 1000, 3), ("r2", 1000, 3)]
    detail = con.execute(
        "SELECT dim, key, upstream, cost_micro, idle_share_micro, requests FROM cost_detail "
        "ORDER BY dim, key, upstream"
    ).fetchall()
    # idle shares per replica-hour: r1 idles 2000 of 1000 allocated, r2 1000 of 1000
    assert detail == [
        ("api_key", "k1", "managed", 70, 0, 1),
        ("api_key", "k1", "self_hosted", 1000, 2000, 3),
        ("api_key", "k2", "self_hosted", 1000, 1000, 3),
        ("feature", "chat", "managed", 70, 0, 1),
        ("feature", "chat", "self_hosted", 1600, 2200, 5),
        ("feature", "search", "self_hosted", 400, 800, 1),
    ]
    con.close()
