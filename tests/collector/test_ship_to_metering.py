"""Shipping into metering's real ingest API (in-memory DuckDB), replay duplicates included."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from infermeter.metering.api import create_app
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import MeteringSettings
from tests.collector.collector_helpers import gateway_request_id


def stored(service: MeteringService) -> dict[str, tuple[str, int, int, str]]:
    rows = (
        service.store.cursor()
        .execute("SELECT request_id, tenant, prompt_tokens, completion_tokens, status FROM usage")
        .fetchall()
    )
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def test_records_land_in_metering_exactly_once(
    engine: Any, make_collector: Any, serve: Any, tmp_path: Path
) -> None:
    _, upstream = engine
    service = MeteringService(
        MeteringSettings(
            storage="duckdb:///:memory:",
            ingest_token="tok",
            allocate_every_s=0,
        )
    )
    try:
        metering = serve(create_app(service, start_loop=False))
        col = make_collector(
            upstream.url,
            metering_url=metering.url,
            ingest_token="tok",
            spool_dir=str(tmp_path),
            batch_interval_s=0.05,
            batch_size=4,
        )
        for i in range(10):
            body = {
                "model": "tiny-llama",
                "prompt": "a b c",
                "max_tokens": 2 + i % 3,
                "stream": i % 2 == 0,
            }
            r = httpx.post(
                f"{col.url}/v1/completions", json=body, headers=gateway_request_id(f"m{i}")
            )
            assert r.status_code == 200
        deadline = time.monotonic() + 15
        while len(stored(service)) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        rows = stored(service)
        assert set(rows) == {f"m{i}" for i in range(10)}
        assert rows["m4"] == ("anonymous", 3, 2 + 4 % 3, "ok")
        # a replay after a crash sends the same ids again: metering keeps one of each
        spool_copy = [r.to_json() for r in col.records.records]
        again = httpx.post(
            f"{metering.url}/v1/usage", json=spool_copy, headers={"authorization": "Bearer tok"}
        ).json()
        assert (again["accepted"], again["duplicates"]) == (0, 10)
        assert len(stored(service)) == 10
    finally:
        service.stop()


def test_fifty_requests_under_one_client_id_are_billed_fifty_times(
    engine: Any, make_collector: Any, serve: Any, tmp_path: Path
) -> None:
    """A client that reaches the collector directly cannot choose the id metering
    de-duplicates on: without the gateway's secret its id becomes a tag."""
    _, upstream = engine
    service = MeteringService(
        MeteringSettings(storage="duckdb:///:memory:", ingest_token="tok", allocate_every_s=0)
    )
    try:
        metering = serve(create_app(service, start_loop=False))
        col = make_collector(
            upstream.url, metering_url=metering.url, ingest_token="tok",
            spool_dir=str(tmp_path), batch_interval_s=0.05, batch_size=16,
        )  # fmt: skip
        body = {"model": "tiny-llama", "prompt": "a b c", "max_tokens": 2}
        ids = set()
        for _ in range(50):
            r = httpx.post(
                f"{col.url}/v1/completions", json=body,
                headers={"x-infermeter-request-id": "pay-once"},
            )  # fmt: skip
            assert r.status_code == 200
            ids.add(r.headers["x-infermeter-request-id"])
        assert len(ids) == 50 and "pay-once" not in ids
        deadline = time.monotonic() + 15
        while len(stored(service)) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(stored(service)) == 50
        tags = (
            service.store.cursor()
            .execute("SELECT DISTINCT tags['client_request_id'] FROM usage")
            .fetchall()
        )
        assert tags == [("pay-once",)]
        assert col.sample("infermeter_collector_client_request_ids_total") == 50
        # the gateway (with the shared secret) still names the id
        r = httpx.post(f"{col.url}/v1/completions", json=body, headers=gateway_request_id("gw-1"))
        assert r.headers["x-infermeter-request-id"] == "gw-1"
    finally:
        service.stop()
