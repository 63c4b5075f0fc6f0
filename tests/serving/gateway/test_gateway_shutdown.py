"""A real ``python -m infermeter gateway`` process stops fast on SIGTERM and loses no records;
after ``kill -9`` the records it made are in its on-disk spool, and the next start ships them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from infermeter.kernel.tenancy import hash_key
from infermeter.throttle.app import Runtime, create_app
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.settings import ThrottleSettings
from tests.conftest import REPO, free_port, wait_http, wait_until
from tests.serving.gateway.gateway_helpers import (
    METERING_TOKEN,
    MODEL,
    SECRET,
    MeteringContract,
    simulator_app,
    throttle_policy,
)

STOP_BOUND_S = 1.5  # measured ~0.2 s; the old gateway took ~1.5-5 s and dropped open streams
POLICY = throttle_policy(["*"])
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 8}


def _config(
    path: Path, port: int, throttle: str, metering: str, replica: str, flush_s: float = 60.0
) -> None:
    path.write_text(
        f'[tenancy]\nshared_secret = "{SECRET}"\n'
        f'[tenancy.keys."{hash_key("sk-tiny")}"]\ntenant = "tiny"\nkey_id = "key-tiny"\n'
        f'[tenancy.keys."{hash_key("sk-acme")}"]\ntenant = "acme"\nkey_id = "key-acme"\n'
        f'[gateway]\nport = {port}\nthrottle_url = "{throttle}"\n'
        f'metering_url = "{metering}"\nmetering_token = "{METERING_TOKEN}"\n'
        f'spool_dir = "{path.parent / "gateway-spool"}"\n'
        f"metering_flush_s = {flush_s}\nsignal_poll_s = 30.0\n"
        f'[gateway.models."{MODEL}"]\nreplicas = [{{ url = "{replica}" }}]\n'
    )


def _start(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "infermeter", "gateway", "--config", str(cfg), "--no-workers"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _throttled_requests(url: str) -> list[str]:
    """Requests of the tiny tier until at least 3 were throttled: their request ids."""
    throttled = []
    for _ in range(8):  # the tiny tier's first request may fit its bucket
        resp = httpx.post(
            url + "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-tiny"}
        )
        assert resp.status_code in (200, 429), resp.text
        if resp.status_code == 429:
            throttled.append(resp.headers["x-infermeter-request-id"])
    assert len(throttled) >= 3
    return throttled


def test_sigterm_stops_fast_and_flushes_queued_usage_records(
    serve: Callable[..., Any], tmp_path: Path, pytestconfig: Any
) -> None:
    contract = MeteringContract()
    metering = serve(contract.app())
    throttle = serve(
        create_app(Runtime(ThrottleSettings(), policy=load_policy_text(POLICY)), background=False)
    )
    port = free_port()
    cfg = tmp_path / "gateway.toml"
    _config(cfg, port, throttle.url, metering.url, serve(simulator_app()).url)
    url = f"http://127.0.0.1:{port}"
    proc = _start(cfg)
    try:
        wait_http(url + "/healthz")
        throttled = _throttled_requests(url)
        # An open event stream of a queued job (no workers) must not hold the stop up.
        job = httpx.post(url + "/v1/jobs", json=CHAT, headers={"authorization": "Bearer sk-acme"})
        assert job.status_code == 202
        stream_ended = threading.Event()

        def follow() -> None:
            with httpx.stream(
                "GET",
                url + job.json()["events_url"].removeprefix(url),
                headers={"authorization": "Bearer sk-acme"},
                timeout=30,
            ) as resp:
                for _ in resp.iter_raw():
                    pass
            stream_ended.set()

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        time.sleep(0.3)  # the stream is open and blocked waiting for events
        assert not stream_ended.is_set()
        assert contract.records == [], "records were shipped before the stop"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read().decode() if proc.stdout else ""
    print(f"gateway stopped {elapsed:.3f} s after SIGTERM")
    assert code in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal it handled
    assert elapsed < STOP_BOUND_S, f"stop took {elapsed:.3f} s"
    assert stream_ended.wait(5), "the event stream was not ended by the stop"
    shipped = sorted(r.request_id for r in contract.records if r.status == "throttled")
    assert shipped == sorted(throttled), "queued usage records were lost at the stop"


def _spool_backlog(url: str) -> int:
    """The records the gateway's readiness says wait on disk (metering down: a 503 body)."""
    return int(httpx.get(url + "/readyz").json()["usage_spool"]["records"])


def test_kill_9_loses_no_gateway_made_record(serve: Callable[..., Any], tmp_path: Path) -> None:
    throttle = serve(
        create_app(Runtime(ThrottleSettings(), policy=load_policy_text(POLICY)), background=False)
    )
    metering_port, port = free_port(), free_port()  # metering is down at first
    cfg = tmp_path / "gateway.toml"
    metering_url = f"http://127.0.0.1:{metering_port}"
    _config(cfg, port, throttle.url, metering_url, serve(simulator_app()).url, flush_s=0.05)
    url = f"http://127.0.0.1:{port}"
    proc = _start(cfg)
    try:
        wait_http(url + "/healthz")
        throttled = _throttled_requests(url)
        wait_until(lambda: _spool_backlog(url) == len(throttled))  # on disk, metering down
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    contract = MeteringContract()
    serve(contract.app(), port=metering_port)  # metering is back
    proc = _start(cfg)  # the next start, on the same spool
    try:
        wait_http(url + "/healthz")
        shipped = lambda: {r.request_id for r in contract.records if r.status == "throttled"}  # noqa: E731
        wait_until(lambda: shipped() >= set(throttled), timeout=30)
        wait_until(lambda: _spool_backlog(url) == 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert shipped() == set(throttled)
