"""Shipping to a real loopback ingest receiver: batching, outage + replay, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.collector.collector_helpers import SECRET, gateway_request_id
from tests.collector.usage_receiver import UsageReceiver
from tests.conftest import REPO, wait_until


def completion(i: int) -> dict[str, Any]:
    return {"model": "tiny-llama", "prompt": "a b c", "max_tokens": 3, "stream": i % 2 == 0}


def test_batches_reach_metering_and_survive_an_outage(
    engine: Any, make_collector: Any, serve: Any, tmp_path: Path
) -> None:
    _, upstream = engine
    receiver = UsageReceiver()
    metering = serve(receiver)
    col = make_collector(
        upstream.url,
        metering_url=metering.url,
        ingest_token="ingest-token",
        spool_dir=str(tmp_path),
        batch_size=5,
        batch_interval_s=0.05,
        retry_initial_s=0.05,
        retry_max_s=0.1,
    )
    for i in range(12):
        httpx.post(
            f"{col.url}/v1/completions",
            json=completion(i),
            headers=gateway_request_id(f"a{i}"),
        )
    wait_until(lambda: len(receiver.usage) == 12)
    assert receiver.order == [f"a{i}" for i in range(12)]  # in order
    assert receiver.batches >= 3  # batched by size
    receiver.down = True
    for i in range(12, 30):
        httpx.post(
            f"{col.url}/v1/completions",
            json=completion(i),
            headers=gateway_request_id(f"a{i}"),
        )
    wait_until(lambda: receiver.refused >= 2)
    assert col.sample("infermeter_collector_spool_records", {"kind": "usage"}) == 18
    assert col.sample("infermeter_collector_shipping_failures_total", {"kind": "usage"}) >= 2
    receiver.down = False
    wait_until(lambda: len(receiver.usage) == 30)
    assert receiver.order == [f"a{i}" for i in range(30)]  # replayed in order
    wait_until(lambda: col.sample("infermeter_collector_spool_records", {"kind": "usage"}) == 0)
    wait_until(
        lambda: col.sample("infermeter_collector_shipped_records_total", {"kind": "usage"}) == 30
    )
    rec = receiver.usage["a3"]
    assert rec["completion_tokens"] == 3 and rec["prompt_tokens"] == 3 and rec["pool"] == "default"


def test_wrong_token_keeps_records_spooled(
    engine: Any, make_collector: Any, serve: Any, tmp_path: Path
) -> None:
    _, upstream = engine
    receiver = UsageReceiver()
    metering = serve(receiver)
    col = make_collector(
        upstream.url,
        metering_url=metering.url,
        ingest_token="wrong",
        spool_dir=str(tmp_path),
        batch_interval_s=0.05,
        retry_initial_s=0.05,
    )
    httpx.post(f"{col.url}/v1/completions", json=completion(1))
    wait_until(
        lambda: col.sample("infermeter_collector_shipping_failures_total", {"kind": "usage"}) >= 1
    )
    assert receiver.usage == {}
    assert col.sample("infermeter_collector_spool_records", {"kind": "usage"}) == 1
    ready = httpx.get(f"{col.url}/readyz").json()
    assert "401" in ready["metering"] and ready["spool_records"] == 1


def _start_collector(
    upstream: str, metering: str, port: int, spool: Path, config: Path
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "infermeter.collector",
        "--config",
        str(config),
        "--upstream",
        upstream,
        "--port",
        str(port),
        "--metering-url",
        metering,
        "--ingest-token",
        "ingest-token",
        "--spool-dir",
        str(spool),
        "--batch-interval",
        "0.05",
        "--no-nvml",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"collector did not start: {proc.stderr.read() if proc.stderr else ''!r}")


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_record(engine: Any, serve: Any, tmp_path: Path) -> None:
    from tests.conftest import free_port

    _, upstream = engine
    receiver = UsageReceiver()
    receiver.down = True  # metering is down: everything must go through the spool
    metering = serve(receiver)
    config = tmp_path / "empty.toml"
    config.write_text(f'[tenancy]\nshared_secret = "{SECRET}"\n')  # ids named as the gateway does
    spool = tmp_path / "spool"
    port = free_port()
    proc = _start_collector(upstream.url, metering.url, port, spool, config)
    acknowledged: list[str] = []
    try:
        with httpx.Client(timeout=10) as client:
            for i in range(40):
                rid = f"k{i}"
                r = client.post(
                    f"http://127.0.0.1:{port}/v1/completions",
                    json=completion(i),
                    headers=gateway_request_id(rid),
                )
                assert r.status_code == 200
                acknowledged.append(rid)  # the client saw the whole response
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert receiver.usage == {}
    receiver.down = False
    proc = _start_collector(upstream.url, metering.url, port, spool, config)
    try:
        wait_until(lambda: set(acknowledged) <= set(receiver.usage))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert receiver.order[: len(acknowledged)] == acknowledged
