"""Real disk faults under the collector's spool: a full file system, a disk the kernel turns
read-only under the running collector, a second collector on the same directory, a
background task that fails.

The full disk is a small tmpfs, the read-only one an ext4 on a loop device that the kernel
aborts (``remount,abort``: its emergency read-only mode after a disk error, which a plain
``remount,ro`` cannot stage while the spool holds a segment open for writing): the machine's
real kernel file systems, no fake. Both need root (and loop devices), which the CI machine
has; elsewhere the tests say so and skip.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infermeter.kernel.asgi import read_body
from infermeter.kernel.errors import SpoolLocked
from infermeter.kernel.spool import Spool
from infermeter.kernel.supervision import supervised
from infermeter.metering.api import create_app
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import MeteringSettings
from tests.collector.test_ship_to_metering import stored
from tests.conftest import Ext4Disk, fill, wait_until

BODY = {"model": "tiny-llama", "prompt": "a b c", "max_tokens": 2}


@pytest.fixture
def metering(serve: Any) -> Iterator[tuple[MeteringService, str]]:
    service = MeteringService(
        MeteringSettings(storage="duckdb:///:memory:", ingest_token="tok", allocate_every_s=0)
    )
    try:
        yield service, serve(create_app(service, start_loop=False)).url
    finally:
        service.stop()


def test_a_full_disk_holds_records_and_loses_none(
    engine: Any, make_collector: Any, metering: tuple[MeteringService, str], small_fs: Path
) -> None:
    _, upstream = engine
    service, url = metering
    col = make_collector(
        upstream.url, metering_url=url, ingest_token="tok", spool_dir=str(small_fs / "spool"),
        batch_interval_s=0.05, durable_ack=True,
    )  # fmt: skip
    pipeline = col.app.pipeline
    filler = fill(small_fs)
    produced = 30
    for _ in range(produced):  # durable_ack: each response waits for its record's spool write
        assert httpx.post(f"{col.url}/v1/completions", json=BODY, timeout=10).status_code == 200
    wait_until(lambda: pipeline.held == produced)
    ready = httpx.get(f"{col.url}/readyz")
    assert ready.status_code == 503 and f"{produced} records held" in ready.json()["problems"][
        "spool"]  # fmt: skip
    assert col.sample("infermeter_collector_records_held") == produced
    assert stored(service) == {}
    # the disk has room again: the collector recovers by itself, every record arrives once
    filler.unlink()
    wait_until(lambda: len(stored(service)) == produced)
    wait_until(lambda: httpx.get(f"{col.url}/readyz").status_code == 200)
    assert pipeline.held == 0 and len(stored(service)) == produced
    assert col.sample("infermeter_collector_records_dropped_total",
                      {"reason": "spool_unwritable"}) == 0  # fmt: skip


def test_a_disk_turned_read_only_holds_records_and_loses_none(
    engine: Any, make_collector: Any, metering: tuple[MeteringService, str], ext4_disk: Ext4Disk
) -> None:
    """The kernel turns the spool's ext4 read-only under the running collector (as after a
    disk error); records are held, readiness says EROFS, responses do not wait; once the disk
    is checked and mounted again every record arrives exactly once."""
    _, upstream = engine
    service, url = metering
    col = make_collector(
        upstream.url, metering_url=url, ingest_token="tok",
        spool_dir=str(ext4_disk.path / "spool"), batch_interval_s=0.05, durable_ack=True,
    )  # fmt: skip
    pipeline = col.app.pipeline
    before, after = 10, 20
    for _ in range(before):
        assert httpx.post(f"{col.url}/v1/completions", json=BODY, timeout=10).status_code == 200
    wait_until(lambda: len(stored(service)) == before)
    ext4_disk.fail()
    for _ in range(after):
        assert httpx.post(f"{col.url}/v1/completions", json=BODY, timeout=10).status_code == 200
    wait_until(lambda: pipeline.held == after)
    ready = httpx.get(f"{col.url}/readyz")
    assert ready.status_code == 503 and "Read-only file system" in ready.json()["problems"][
        "spool"]  # fmt: skip
    ext4_disk.repair()
    wait_until(lambda: len(stored(service)) == before + after, timeout=30)
    wait_until(lambda: httpx.get(f"{col.url}/readyz").status_code == 200, timeout=30)
    assert pipeline.held == 0 and len(stored(service)) == before + after
    assert col.sample("infermeter_collector_records_dropped_total",
                      {"reason": "spool_unwritable"}) == 0  # fmt: skip


def test_a_second_collector_on_one_spool_refuses_to_start(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    with pytest.raises(SpoolLocked, match=f"pid {os.getpid()}"):
        Spool(tmp_path)
    first.close()
    Spool(tmp_path).close()  # released on close


async def test_a_failing_background_task_is_restarted_with_backoff_and_counted() -> None:
    runs: list[int] = []
    waits: list[float] = []
    restarts: list[str] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 4:
            raise RuntimeError("boom")
        await asyncio.Event().wait()  # healthy from the 4th run on

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    task = asyncio.create_task(
        supervised(
            "records",
            flaky,
            on_restart=restarts.append,
            log=logging.getLogger("t"),
            sleep=no_wait,
            mono=lambda: 0.0,
        )
    )
    for _ in range(50):
        if len(runs) == 4:
            break
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(runs) == 4 and restarts == ["records"] * 3
    assert waits == [0.5, 1.0, 2.0]


async def _refuse_everything(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A metering that refuses every batch as a whole (422)."""
    if scope["type"] != "http":
        return
    await read_body(receive)
    body = b'{"error": {"message": "batch refused", "param": "body", "code": 422}}'
    await send({"type": "http.response.start", "status": 422,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


async def test_the_dead_letter_file_is_rotated_by_size(tmp_path: Path, serve: Any) -> None:
    from prometheus_client import CollectorRegistry

    from infermeter.kernel.metering_client import MeteringClient
    from infermeter.kernel.spool_shipper import Shipper, ShipperMetrics

    refuser = serve(_refuse_everything)
    spool = Spool(tmp_path)
    client = MeteringClient(refuser.url, attempts=1)
    shipper = Shipper(spool, client, "/v1/usage", "usage", ShipperMetrics(CollectorRegistry()),
                      batch_size=10, dead_letter_max_bytes=2048)  # fmt: skip
    try:
        for batch in range(10):
            spool.append([b'{"request_id": "r%d-%d", "pad": "%s"}' % (batch, i, b"x" * 40)
                          for i in range(10)])  # fmt: skip
            assert await shipper.drain()
    finally:
        await client.close()
        spool.close()
    current, older = tmp_path / "dead-letter.jsonl", tmp_path / "dead-letter.jsonl.1"
    assert current.exists() and older.exists()
    assert current.stat().st_size < 2048 + 10 * 80  # at most one batch past the limit
    kept = current.read_text().splitlines() + older.read_text().splitlines()
    assert len(kept) < 100 and spool.pending == 0  # the oldest rotated away, none blocking
    assert not any('"r0-0"' in line for line in kept) and any('"r9-9"' in line for line in kept)
