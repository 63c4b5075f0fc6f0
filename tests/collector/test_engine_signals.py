"""Engine signals from real vLLM expositions; the scraper against a loopback engine."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from infermeter.collector.engine_scraper import EngineScraper
from infermeter.collector.engine_signals import (
    EngineSignals,
    SignalDeriver,
    counter_delta,
    histogram_quantile,
    parse_exposition,
)
from tests.conftest import VLLM_ARTIFACTS as ARTIFACTS
from tests.conftest import promtool_check

BEFORE = (ARTIFACTS / "metrics_before_load.txt").read_text()
AFTER = (ARTIFACTS / "metrics_after_load.txt").read_text()


def with_gauges(text: str, running: float, waiting: float, kv: float) -> str:
    text = re.sub(r"^(vllm:num_requests_running\{[^}]*\}) \S+$", rf"\1 {running}", text, flags=re.M)
    text = re.sub(r"^(vllm:num_requests_waiting\{[^}]*\}) \S+$", rf"\1 {waiting}", text, flags=re.M)
    return re.sub(r"^(vllm:kv_cache_usage_perc\{[^}]*\}) \S+$", rf"\1 {kv}", text, flags=re.M)


def buckets(text: str, name: str) -> list[tuple[float, float]]:
    pairs = re.findall(
        rf'^{re.escape(name)}_bucket\{{[^}}]*le="([^"]+)"[^}}]*\}} (\S+)$', text, flags=re.M
    )
    return [(float(le), float(v)) for le, v in pairs]


def test_rates_and_quantiles_from_real_expositions() -> None:
    deriver = SignalDeriver("pool-a", "r1")
    (first,) = deriver.update(BEFORE, mono=100.0, wall=1_800_000_000.0)
    assert (
        first.model == "tiny-llama"
        and first.prompt_tokens_per_s == 0.0
        and first.ttft_p50_s is None
    )
    (sig,) = deriver.update(with_gauges(AFTER, 3, 5, 0.25), mono=110.0, wall=1_800_000_010.0)
    assert sig.prompt_tokens_per_s == pytest.approx((246 - 45) / 10)
    assert sig.generation_tokens_per_s == pytest.approx((688 - 48) / 10)
    assert (sig.num_requests_running, sig.num_requests_waiting, sig.kv_cache_usage_perc) == (
        3,
        5,
        0.25,
    )
    old = dict(buckets(BEFORE, "vllm:time_to_first_token_seconds"))
    delta = [(le, c - old[le]) for le, c in buckets(AFTER, "vllm:time_to_first_token_seconds")]
    assert sig.ttft_p50_s == pytest.approx(histogram_quantile(0.5, delta))
    assert sig.ttft_p50_s is not None and 0 < sig.ttft_p50_s <= sig.ttft_p95_s  # type: ignore[operator]
    assert sig.itl_p50_s is not None and sig.preemptions_per_s == 0.0
    body = sig.to_json()
    assert set(body) >= {
        "pool",
        "replica",
        "model",
        "ts",
        "num_requests_running",
        "num_requests_waiting",
        "kv_cache_usage_perc",
        "prompt_tokens_per_s",
        "generation_tokens_per_s",
        "ttft_p50_s",
        "ttft_p95_s",
        "itl_p50_s",
        "itl_p95_s",
        "preemptions_per_s",
    }


def test_counter_reset_is_handled() -> None:
    assert counter_delta(100.0, 130.0) == 30.0
    assert counter_delta(100.0, 7.0) == 7.0  # the engine restarted
    deriver = SignalDeriver("p", "r")
    deriver.update(AFTER, mono=0.0, wall=0.0)
    (sig,) = deriver.update(BEFORE, mono=5.0, wall=5.0)  # counters went down: a restart
    assert sig.prompt_tokens_per_s == pytest.approx(45 / 5)
    assert sig.ttft_p50_s == pytest.approx(
        histogram_quantile(0.5, buckets(BEFORE, "vllm:time_to_first_token_seconds"))
    )


def test_histogram_quantile_interpolates_like_promql() -> None:
    b = [(0.1, 0.0), (0.2, 10.0), (0.4, 20.0), (float("inf"), 20.0)]
    assert histogram_quantile(0.5, b) == pytest.approx(0.2)
    assert histogram_quantile(0.75, b) == pytest.approx(0.3)
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.99, [(0.1, 0.0), (float("inf"), 4.0)]) == 0.1


def test_parse_sums_engines_and_averages_kv() -> None:
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 2\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 3\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.4\n'
    )
    gauges, _ = parse_exposition(text)["m"]
    assert gauges["vllm:num_requests_running"] == 5
    assert gauges["vllm:kv_cache_usage_perc"] == pytest.approx(0.3)


class SignalSink:
    def __init__(self) -> None:
        self.bodies: list[Any] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        msg = await receive()
        self.bodies.append((scope["path"], json.loads(msg.get("body", b"null"))))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def test_scraper_publishes_metrics_and_pushes_to_throttle(
    engine: Any, make_collector: Any, serve: Any
) -> None:
    eng, upstream = engine
    sink = SignalSink()
    throttle = serve(sink)
    eng.metrics_text = BEFORE
    col = make_collector(
        upstream.url, scrape_interval_s=0.1, throttle_url=throttle.url, pool="p1", replica="r1"
    )
    deadline = time.monotonic() + 10
    while len(sink.bodies) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    eng.metrics_text = with_gauges(AFTER, 4, 28, 0.5)
    while time.monotonic() < deadline:
        signals = httpx.get(f"{col.url}/v1/signals").json()
        if (
            signals
            and signals[0]["num_requests_waiting"] == 28
            and signals[0]["generation_tokens_per_s"] > 0
        ):
            break
        time.sleep(0.05)
    (sig,) = signals
    assert (sig["pool"], sig["replica"], sig["model"], sig["num_requests_running"]) == (
        "p1",
        "r1",
        "tiny-llama",
        4,
    )
    path, pushed = sink.bodies[-1]
    assert path == "/v1/signals" and pushed[0]["model"] == "tiny-llama"
    text = httpx.get(f"{col.url}/metrics").text
    assert 'infermeter_engine_num_requests_waiting{model="tiny-llama"} 28.0' in text
    assert 'infermeter_engine_kv_cache_usage_perc{model="tiny-llama"} 0.5' in text
    assert "infermeter_engine_up 1.0" in text
    gap = col.sample(
        "infermeter_engine_unmetered_tokens", {"model": "tiny-llama", "kind": "generation"}
    )
    assert gap == 688 - 48  # the engine generated tokens no record (of ours) carries


def test_scraper_survives_engine_without_metrics(make_collector: Any) -> None:
    col = make_collector("http://127.0.0.1:9", scrape_interval_s=0.05)
    deadline = time.monotonic() + 10
    while col.sample("infermeter_engine_scrape_failures_total") < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    text = httpx.get(f"{col.url}/metrics").text
    assert "infermeter_engine_up 0.0" in text
    assert httpx.get(f"{col.url}/healthz").status_code == 200  # the collector keeps running


def test_engine_quantile_gauges_are_promtool_clean() -> None:
    # One gauge per quantile: a `quantile` label on a gauge is a promtool lint finding.
    scraper = EngineScraper(None, "http://127.0.0.1:9/metrics", SignalDeriver("p", "r"))  # type: ignore[arg-type]
    scraper.signals = [
        EngineSignals("p", "r", "tiny-llama", 0.0, ttft_p50_s=0.02, ttft_p95_s=0.08,
                      itl_p50_s=0.01, itl_p95_s=0.03)
    ]  # fmt: skip
    registry = CollectorRegistry()
    registry.register(scraper)
    text = generate_latest(registry).decode()
    assert 'infermeter_engine_ttft_p95_seconds{model="tiny-llama"} 0.08' in text
    assert 'infermeter_engine_itl_p50_seconds{model="tiny-llama"} 0.01' in text
    code, findings = promtool_check(text)
    assert code == 0, findings
