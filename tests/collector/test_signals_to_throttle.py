"""Engine signals pushed into throttle's real API (POST /v1/signals), seen by its autoscaler."""

from __future__ import annotations

import time
from typing import Any

import httpx

from infermeter.throttle.app import Runtime, create_app
from infermeter.throttle.settings import ThrottleSettings
from tests.conftest import VLLM_ARTIFACTS as ARTIFACTS
from tests.conftest import wait_until


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


def test_signals_carry_the_signals_token_and_a_refusal_turns_readiness_red(
    engine: Any, make_collector: Any, serve: Any
) -> None:
    eng, upstream = engine
    eng.metrics_text = (ARTIFACTS / "metrics_after_load_maxseqs4.txt").read_text()
    runtime = Runtime(ThrottleSettings(api_token="decide", signals_token="signals"))
    throttle = serve(create_app(runtime, background=False))
    read = {"authorization": "Bearer decide"}
    good = make_collector(
        upstream.url, scrape_interval_s=0.1, throttle_url=throttle.url, pool="p1",
        replica="r1", throttle_token="signals",
    )  # fmt: skip
    wait_until(
        lambda: httpx.get(f"{throttle.url}/v1/autoscale/p1", headers=read).status_code == 200
    )
    assert good.app.scraper.push_failures == 0
    assert httpx.get(f"{good.url}/readyz").status_code == 200
    bad = make_collector(
        upstream.url, scrape_interval_s=0.1, throttle_url=throttle.url, pool="p2",
        replica="r2", throttle_token="wrong",
    )  # fmt: skip
    wait_until(lambda: bad.app.scraper.push_failures >= 1)
    ready = httpx.get(f"{bad.url}/readyz")
    assert ready.status_code == 503, ready.text
    assert "throttle_token" in ready.json()["problems"]["throttle"]
    metrics = httpx.get(f"{bad.url}/metrics").text
    assert 'infermeter_collector_dependency_auth_failures_total{dependency="throttle"}' in metrics
    assert "p2" not in runtime.monitor.states  # nothing of the refused collector got in
