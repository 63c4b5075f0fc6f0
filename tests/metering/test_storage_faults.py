"""A real fatal DuckDB error under a running metering server: a checkpoint that a full disk
refuses invalidates the database (DuckDB then answers every query with FatalException until
the process restarts). Liveness must fail so that the orchestrator restarts metering; ingest
answers 503 (collectors keep their records spooled); a restart recovers every committed batch
from the WAL. The disk is a real tmpfs (root only, as the CI machine is)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pytest

from infermeter.metering.api import create_app
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import MeteringSettings
from tests.conftest import fill
from tests.metering.test_api import INGEST, usage


def _service(path: Path) -> MeteringService:
    return MeteringService(
        MeteringSettings(
            storage=f"duckdb:///{path}", ingest_token="ingest-secret", allocate_every_s=0
        )
    )


def _stored(path: Path) -> int:
    service = _service(path)
    try:
        cur = service.store.cursor()
        (count,) = cur.execute("SELECT count(*) FROM usage").fetchone() or (0,)
        return int(count)
    finally:
        service.stop()


def test_a_fatal_store_error_fails_liveness_and_a_restart_recovers(
    tmpfs: Callable[[str], Path], serve: Callable[..., Any]
) -> None:
    disk = tmpfs("32m")
    db = disk / "metering.duckdb"
    service = _service(db)
    url = serve(create_app(service, start_loop=False)).url
    batch = orjson.dumps([usage(i) for i in range(50)])
    assert httpx.post(f"{url}/v1/usage", content=batch, headers=INGEST).json()["accepted"] == 50
    assert httpx.get(f"{url}/healthz").status_code == 200
    filler = fill(disk)
    with pytest.raises(duckdb.FatalException):  # what DuckDB's automatic checkpoint meets
        service.store.cursor().execute("CHECKPOINT")
    live = httpx.get(f"{url}/healthz")
    assert live.status_code == 503, live.text
    assert "invalidated" in live.json()["problems"]["storage"]
    assert httpx.get(f"{url}/readyz").status_code == 503
    more = orjson.dumps([usage(i) for i in range(50, 60)])
    refused = httpx.post(f"{url}/v1/usage", content=more, headers=INGEST)
    assert refused.status_code == 503 and "error" in refused.json(), refused.text
    filler.unlink()
    assert httpx.get(f"{url}/healthz").status_code == 503, "only a restart clears it"
    service.store.close()
    assert _stored(db) == 50  # the restart replays the WAL: no committed batch lost
