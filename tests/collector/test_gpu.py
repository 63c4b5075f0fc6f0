"""The NVML sampler through the FAKE NVML module (no GPU here), and without NVML at all."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from infermeter.collector.gpu import NvmlSampler, dcgm_exposition
from tests.collector import fake_nvml

GIB = 1024**3


@pytest.fixture
def sampler() -> NvmlSampler:
    fake_nvml.reset()
    s = NvmlSampler(
        fake_nvml, node="node-1", replica="r1", engine_pid=4242, wall=lambda: 1_800_000_000.0
    )  # type: ignore[arg-type]
    assert s.start()
    return s


def test_every_gpu_and_mig_instance_is_sampled(sampler: NvmlSampler) -> None:
    samples = sampler.sample()
    assert [(s.gpu_uuid, s.mig_uuid, s.mig_profile) for s in samples] == [
        ("GPU-h100-0000", "", ""),
        ("GPU-h100-0000", "MIG-aaaa", "3g.40gb"),
        ("GPU-h100-0000", "MIG-bbbb", "4g.40gb"),
        ("GPU-a100-1111", "", ""),
    ]
    h100, mig_a, _, a100 = samples
    assert (h100.util_pct, h100.power_w, h100.energy_j, h100.temp_c, h100.sm_clock_mhz) == (
        55,
        350,
        1_000_000,
        61,
        1755,
    )
    assert (h100.mem_used_bytes, h100.mem_total_bytes) == (60 * GIB, 80 * GIB)
    assert mig_a.mem_total_bytes == 40 * GIB and mig_a.util_pct == 0.0  # not supported on MIG
    assert a100.replica == "r1" and h100.replica == ""  # the engine (pid 4242) runs on the A100
    assert h100.ts == datetime.fromtimestamp(1_800_000_000.0, tz=UTC) and h100.node == "node-1"
    fake_nvml.advance(10)
    assert sampler.sample()[0].energy_j == pytest.approx(1_000_000 + 3500)


def test_dcgm_exporter_names_and_labels(sampler: NvmlSampler) -> None:
    sampler.sample()
    registry = CollectorRegistry()
    registry.register(sampler)
    get = registry.get_sample_value
    gpu0 = {
        "gpu": "0",
        "UUID": "GPU-h100-0000",
        "device": "nvidia0",
        "modelName": "NVIDIA H100 80GB HBM3",
        "Hostname": "node-1",
        "GPU_I_ID": "",
        "GPU_I_PROFILE": "",
    }
    mig = {**gpu0, "GPU_I_ID": "1", "GPU_I_PROFILE": "3g.40gb"}
    gpu1 = {
        "gpu": "1",
        "UUID": "GPU-a100-1111",
        "device": "nvidia1",
        "modelName": "NVIDIA A100-SXM4-40GB",
        "Hostname": "node-1",
        "GPU_I_ID": "",
        "GPU_I_PROFILE": "",
    }
    assert get("DCGM_FI_DEV_GPU_UTIL", gpu0) == 55
    assert get("DCGM_FI_DEV_FB_USED", gpu0) == 60 * 1024
    assert get("DCGM_FI_DEV_FB_USED", mig) == 30 * 1024
    assert get("DCGM_FI_DEV_FB_FREE", gpu1) == 2 * 1024
    assert get("DCGM_FI_DEV_POWER_USAGE", gpu1) == 400
    assert get("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", gpu1) == 5_000_000
    assert get("DCGM_FI_DEV_GPU_TEMP", gpu1) == 70
    assert get("DCGM_FI_DEV_SM_CLOCK", gpu0) == 1755
    assert get("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", gpu0) == 4
    assert get("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", gpu1) == 2
    assert get("DCGM_FI_DEV_XID_ERRORS", gpu1) == 79
    assert get("DCGM_FI_DEV_GPU_UTIL", mig) is None  # no reading, no series
    assert get("infermeter_gpu_process_memory_bytes", {**gpu1, "pid": "4242"}) == 36 * GIB
    assert (
        get("infermeter_gpu_engine_attached", gpu1) == 1
        and get("infermeter_gpu_engine_attached", gpu0) == 0
    )
    assert get("infermeter_nvml_up") == 1
    text = dcgm_exposition(generate_latest(registry)).decode()
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter" in text
    assert "\nDCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{" in text  # DCGM's name, no _total


def test_without_nvml_logs_once_and_exports_nvml_up_0(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    sampler = NvmlSampler(pynvml, node="n")  # the real module: no driver on this machine
    assert sampler.start() is False
    assert sampler.sample() == [] and sampler.sample() == []
    registry = CollectorRegistry()
    registry.register(sampler)
    assert registry.get_sample_value("infermeter_nvml_up") == 0
    assert sum("NVML unavailable" in r.message for r in caplog.records) == 1


def test_gpu_samples_are_shipped(engine: Any, serve: Any, tmp_path: Any) -> None:
    import time

    from infermeter.collector.app import CollectorApp
    from infermeter.collector.settings import CollectorSettings
    from tests.collector.collector_helpers import RunningCollector
    from tests.collector.usage_receiver import UsageReceiver

    fake_nvml.reset()
    _, upstream = engine
    receiver = UsageReceiver()
    metering = serve(receiver)
    settings = CollectorSettings(
        upstream=upstream.url,
        metering_url=metering.url,
        ingest_token="ingest-token",
        spool_dir=str(tmp_path),
        gpu_interval_s=0.05,
        batch_interval_s=0.05,
        scrape_interval_s=3600,
        node="node-1",
    )
    app = CollectorApp(settings, nvml=fake_nvml, telemetry=None)  # type: ignore[arg-type]
    col = RunningCollector(serve(app), app, None, app.registry)
    deadline = time.monotonic() + 10
    while len(receiver.samples) < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(receiver.samples) >= 8  # 4 devices x at least 2 readings
    assert {k[2] for k in receiver.samples} == {"", "MIG-aaaa", "MIG-bbbb"}
    assert col.sample("infermeter_nvml_up") == 1
