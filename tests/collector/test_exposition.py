"""The collector's whole /metrics passes promtool; lint findings are only DCGM's by design."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from infermeter.collector.app import CollectorApp
from infermeter.collector.settings import CollectorSettings
from tests.collector import fake_nvml
from tests.collector.usage_receiver import UsageReceiver
from tests.conftest import VLLM_ARTIFACTS as ARTIFACTS
from tests.conftest import promtool_check

# What DCGM-exporter's names and labels carry by design (FACTS.md): camelCase label
# `modelName`, and counters named without `_total`.
CAMEL = "label names should be written in 'snake_case' not 'camelCase'"
DCGM_LABELLED = (
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
    "DCGM_FI_DEV_XID_ERRORS",
    "infermeter_gpu_process_memory_bytes",
    "infermeter_gpu_engine_attached",
)
EXPECTED_FINDINGS = {f"{name} {CAMEL}" for name in DCGM_LABELLED} | {
    'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter metrics should have "_total" suffix',
    'DCGM_FI_DEV_ECC_DBE_VOL_TOTAL counter metrics should have "_total" suffix',
}


def test_full_exposition_passes_promtool(engine: Any, serve: Any, tmp_path: Path) -> None:
    eng, upstream = engine
    eng.metrics_text = (ARTIFACTS / "metrics_after_load.txt").read_text()
    fake_nvml.reset()
    metering = serve(UsageReceiver())
    settings = CollectorSettings(
        upstream=upstream.url,
        metering_url=metering.url,
        ingest_token="ingest-token",
        spool_dir=str(tmp_path),
        gpu_interval_s=0.05,
        scrape_interval_s=0.05,
    )
    app = CollectorApp(settings, nvml=fake_nvml, telemetry=None)  # type: ignore[arg-type]
    col = serve(app)
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    for tenant in ("a", "b"):
        httpx.post(
            f"{col.url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {tenant}"},
        )
    httpx.post(f"{col.url}/v1/completions", json={"model": "nope", "prompt": "x"})
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"{col.url}/metrics").text
        if "DCGM_FI_DEV_GPU_UTIL{" in text and "infermeter_engine_num_requests_running{" in text:
            break
        time.sleep(0.05)
    for family in (
        "infermeter_requests_total{",
        "infermeter_time_to_first_token_seconds_bucket{",
        "infermeter_inter_token_latency_seconds_bucket{",
        "infermeter_e2e_request_latency_seconds_bucket{",
        "infermeter_generation_tokens_per_second{",
        "infermeter_engine_num_requests_running{",
        "infermeter_collector_spool_bytes{",
        "infermeter_collector_shipping_failures_total",
        "infermeter_collector_overhead_seconds_bucket",
        "DCGM_FI_DEV_FB_USED{",
        "infermeter_nvml_up 1.0",
    ):
        assert family in text, family
    code, findings = promtool_check(text)
    assert code == 3, findings  # 3: parsed fine, lint findings only
    assert set(findings) == EXPECTED_FINDINGS, findings
