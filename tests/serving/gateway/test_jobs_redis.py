"""Redis Streams queue: several gateways share it, a worker killed mid-job loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from infermeter.kernel.tenancy import hash_key
from tests.conftest import REPO, free_port
from tests.serving.gateway.gateway_helpers import (
    KEYS,
    MODEL,
    SECRET,
    auth,
    gateway_app,
    gateway_settings,
    read_sse,
    simulator_app,
)

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> Iterator[str]:
    name = "test-gw-" + uuid.uuid4().hex[:8]
    yield name
    r = redis.Redis.from_url(REDIS)
    keys = list(r.scan_iter(match=name + ":*"))
    if keys:
        r.delete(*keys)
    r.close()


def _config(tmp_path: Path, sim_url: str, queue: str, port: int) -> Path:
    lines = [
        "[tenancy]",
        f'shared_secret = "{SECRET}"',
        "[gateway]",
        f"port = {port}",
        "[gateway.jobs]",
        f'queue = "{queue}"',
        "claim_idle_s = 1.0",
        f'[gateway.models."{MODEL}"]',
        f'replicas = [{{ url = "{sim_url}" }}]',
        "job_concurrency = 1",
    ]
    for key, entry in KEYS.items():
        lines += [
            f'[tenancy.keys."{hash_key(key)}"]',
            f'tenant = "{entry.tenant}"',
            f'key_id = "{entry.key_id}"',
        ]
    path = tmp_path / "infermeter.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_worker_killed_mid_job_is_redelivered(
    serve: Callable[..., Any], tmp_path: Path, prefix: str
) -> None:
    # A slow engine so that the job is still generating when its worker is killed.
    sim = serve(simulator_app(time_scale=40.0, output_tokens_median=1000.0))
    queue = f"{REDIS}?prefix={prefix}"
    port = free_port()
    config = _config(tmp_path, sim.url, queue, port)
    worker = subprocess.Popen(
        [sys.executable, "-m", "infermeter", "gateway", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # The front gateway only accepts jobs (no workers): the subprocess takes them.
        settings = gateway_settings([sim.url], jobs={"queue": queue, "claim_idle_s": 1.0})
        front = serve(gateway_app(settings, run_workers=False))
        job = {**{"model": MODEL, "max_tokens": 16}, "messages": [{"role": "user", "content": "x"}]}
        accepted = httpx.post(front.url + "/v1/jobs", json=job, headers=auth("sk-acme")).json()
        status_url = front.url + accepted["status_url"]

        # Follow the job's events until it is generating, then kill its worker.
        deltas = 0
        with httpx.stream(
            "GET", front.url + accepted["events_url"], headers=auth("sk-acme"), timeout=30.0
        ) as stream:
            for line in stream.iter_lines():
                deltas += line == "event: delta"
                if deltas >= 2:
                    break
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        mid = httpx.get(status_url, headers=auth("sk-acme")).json()
        assert mid["status"] == "running" and mid["attempts"] == 1
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    # A second gateway replica with workers takes the abandoned job over.
    survivor = serve(
        gateway_app(gateway_settings([sim.url], jobs={"queue": queue, "claim_idle_s": 1.0}))
    )
    events = read_sse(survivor.url + accepted["events_url"], "sk-acme")
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done", kinds
    starts = [e["data"]["attempt"] for e in events if e["event"] == "started"]
    assert starts == [1, 2]
    final = httpx.get(survivor.url + accepted["status_url"], headers=auth("sk-acme")).json()
    assert final["status"] == "succeeded" and final["attempts"] == 2
    assert final["usage"]["completion_tokens"] == 16
    # Acknowledged: nothing left pending in the consumer group.
    r = redis.Redis.from_url(REDIS)
    pending = r.xpending(f"{prefix}:queue:{MODEL}", "workers")
    r.close()
    assert pending["pending"] == 0


def test_accepted_job_survives_a_gateway_restart(serve: Callable[..., Any], prefix: str) -> None:
    sim = serve(simulator_app())
    queue = f"{REDIS}?prefix={prefix}"
    settings = gateway_settings([sim.url], jobs={"queue": queue})
    first = serve(gateway_app(settings, run_workers=False))
    job = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    accepted = httpx.post(first.url + "/v1/jobs", json=job, headers=auth("sk-acme")).json()
    first.stop()
    second = serve(gateway_app(settings))
    events = read_sse(second.url + accepted["events_url"], "sk-acme")
    assert [e["event"] for e in events][-1] == "done"
