"""Engine signals pushed into throttle's real API (POST /v1/signals), seen by its autoscaler."""

from __future__ import annotations

import time
from typing import Any

import httpx

from infermeter.throttle.app import Runtime, create_app
from infermeter.throttle.settings import ThrottleSettings
from tests.conftest import VLLM_ARTIFACTS as ARTIFACTS


def test_throttle_accepts_the_collectors_signals(
    engine: Any, make_collector: Any, serve: Any
) -> None:
    eng, upstream = engine
    eng.metrics_text = (ARTIFACTS / "metrics_after_load_maxseqs4.txt").read_text()
    runtime = Runtime(ThrottleSettings())
    throttle = serve(create_app(runtime, background=False))
    col = make_collector(
        upstream.url, scrape_interval_s=0.1, throttle_url=throttle.url, pool="p1", replica="r1"
    )
    deadline = time.monotonic() + 15
    answer = httpx.get(f"{throttle.url}/v1/autoscale/p1")
    while answer.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
        answer = httpx.get(f"{throttle.url}/v1/autoscale/p1")
    assert answer.status_code == 200, answer.text
    assert col.app.scraper.pushes >= 1 and col.app.scraper.push_failures == 0
