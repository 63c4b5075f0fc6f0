"""A real ``python -m serving gateway`` process stops fast on SIGTERM and loses no records."""

from __future__ import annotations

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
from tests.conftest import REPO, free_port, wait_http
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


def _config(path: Path, port: int, throttle: str, metering: str, replica: str) -> None:
    path.write_text(
        f'[tenancy]\nshared_secret = "{SECRET}"\n'
        f'[tenancy.keys."{hash_key("sk-tiny")}"]\ntenant = "tiny"\nkey_id = "key-tiny"\n'
        f'[tenancy.keys."{hash_key("sk-acme")}"]\ntenant = "acme"\nkey_id = "key-acme"\n'
        f'[gateway]\nport = {port}\nthrottle_url = "{throttle}"\n'
        f'metering_url = "{metering}"\nmetering_token = "{METERING_TOKEN}"\n'
        # Records would wait 60 s for the shipper: only the stop can have posted them.
        "metering_flush_s = 60.0\nsignal_poll_s = 30.0\n"
        f'[gateway.models."{MODEL}"]\nreplicas = [{{ url = "{replica}" }}]\n'
    )


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
    proc = subprocess.Popen(
        [sys.executable, "-m", "infermeter", "gateway", "--config", str(cfg), "--no-workers"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(url + "/healthz")
        throttled = []
        for _ in range(8):  # the tiny tier's first request may fit its bucket
            resp = httpx.post(
                url + "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-tiny"}
            )
            assert resp.status_code in (200, 429), resp.text
            if resp.status_code == 429:
                throttled.append(resp.headers["x-infermeter-request-id"])
        assert len(throttled) >= 3
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
