"""NVML sampler: every GPU and MIG instance, exported under DCGM-exporter names.

Reads utilisation, framebuffer memory, power, the total-energy counter, temperature, SM
clock, throttle reasons, ECC and XID errors (where the device supports them), and which GPUs
the engine process uses (per-process memory). Prometheus series carry DCGM-exporter metric
and label names (``DCGM_FI_DEV_GPU_UTIL{gpu,UUID,device,modelName,Hostname,GPU_I_ID,
GPU_I_PROFILE}``) so existing Grafana boards work; by design those names carry lint findings
(camelCase labels, counters without ``_total``).

Without NVML (no driver, no GPU) the sampler logs once, exports ``infermeter_nvml_up 0`` and
keeps running. ``nvml`` is injected (``pynvml`` from nvidia-ml-py in production, a fake in
tests).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infermeter.kernel.records import GpuSample

log = logging.getLogger(__name__)
LABELS = ["gpu", "UUID", "device", "modelName", "Hostname", "GPU_I_ID", "GPU_I_PROFILE"]
_MIB = 1024 * 1024


@dataclass(slots=True)
class Reading:
    """One device (GPU or MIG instance) at one time."""

    index: int
    uuid: str
    name: str
    mig_uuid: str = ""
    gpu_instance_id: str = ""
    mig_profile: str = ""
    util_pct: float | None = None
    mem_used: int = 0
    mem_total: int = 0
    power_w: float | None = None
    energy_mj: float | None = None
    temp_c: float | None = None
    sm_clock_mhz: float | None = None
    throttle_reasons: int | None = None
    ecc_dbe: int | None = None
    xid: int | None = None
    processes: dict[int, int] = field(default_factory=dict)  # pid -> bytes

    def labels(self, host: str) -> list[str]:
        return [str(self.index), self.uuid, f"nvidia{self.index}", self.name, host,
                self.gpu_instance_id, self.mig_profile]  # fmt: skip


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlSampler(Collector):
    """Samples NVML; a Prometheus collector of the latest readings."""

    def __init__(
        self,
        nvml: ModuleType | None,
        *,
        node: str,
        replica: str = "",
        engine_pid: int = 0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.nvml = nvml
        self.node = node
        self.replica = replica
        self.engine_pid = engine_pid
        self._wall = wall
        self.up = False
        self.readings: list[Reading] = []
        self._xid_set: Any = None
        self._last_xid: dict[str, int] = {}

    def start(self) -> bool:
        """Initialise NVML; False (logged once, ``nvml_up 0``) when it is unavailable."""
        if self.nvml is None:
            log.warning("NVML unavailable (nvidia-ml-py not importable): GPU telemetry off")
            return False
        try:
            self.nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, driver errors, OSError
            log.warning("NVML unavailable (%s): GPU telemetry off, proxy unaffected", exc)
            return False
        self.up = True
        self._register_xid_events()
        return True

    def _try(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:  # NVMLError_NotSupported and friends: field not available
            return None

    def _register_xid_events(self) -> None:
        n = self.nvml
        assert n is not None
        event_set = self._try(n.nvmlEventSetCreate)
        if event_set is None:
            return
        for i in range(n.nvmlDeviceGetCount()):
            handle = n.nvmlDeviceGetHandleByIndex(i)
            self._try(
                n.nvmlDeviceRegisterEvents, handle, n.nvmlEventTypeXidCriticalError, event_set
            )
        self._xid_set = event_set

    def _poll_xids(self) -> dict[str, int]:
        n = self.nvml
        out: dict[str, int] = {}
        if self._xid_set is None or n is None:
            return out
        while True:
            data = self._try(n.nvmlEventSetWait, self._xid_set, 0)
            if data is None:
                return out
            out[_text(n.nvmlDeviceGetUUID(data.device))] = int(data.eventData)

    def _read(self, handle: Any, index: int, uuid: str, name: str) -> Reading:
        n = self.nvml
        assert n is not None
        r = Reading(index=index, uuid=uuid, name=name)
        util = self._try(n.nvmlDeviceGetUtilizationRates, handle)
        r.util_pct = float(util.gpu) if util is not None else None
        mem = self._try(n.nvmlDeviceGetMemoryInfo, handle)
        if mem is not None:
            r.mem_used, r.mem_total = int(mem.used), int(mem.total)
        power = self._try(n.nvmlDeviceGetPowerUsage, handle)
        r.power_w = power / 1000.0 if power is not None else None
        energy = self._try(n.nvmlDeviceGetTotalEnergyConsumption, handle)
        r.energy_mj = float(energy) if energy is not None else None
        temp = self._try(n.nvmlDeviceGetTemperature, handle, n.NVML_TEMPERATURE_GPU)
        r.temp_c = float(temp) if temp is not None else None
        clock = self._try(n.nvmlDeviceGetClockInfo, handle, n.NVML_CLOCK_SM)
        r.sm_clock_mhz = float(clock) if clock is not None else None
        r.throttle_reasons = self._try(n.nvmlDeviceGetCurrentClocksThrottleReasons, handle)
        r.ecc_dbe = self._try(
            n.nvmlDeviceGetTotalEccErrors, handle,
            n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC,
        )  # fmt: skip
        for proc in self._try(n.nvmlDeviceGetComputeRunningProcesses, handle) or []:
            r.processes[int(proc.pid)] = int(proc.usedGpuMemory or 0)
        return r

    def sample(self) -> list[GpuSample]:
        """Read every GPU and MIG instance now; [] without NVML."""
        if not self.up or self.nvml is None:
            return []
        n = self.nvml
        readings: list[Reading] = []
        try:
            self._last_xid.update(self._poll_xids())
            for i in range(n.nvmlDeviceGetCount()):
                handle = n.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(n.nvmlDeviceGetUUID(handle))
                name = _text(n.nvmlDeviceGetName(handle))
                gpu = self._read(handle, i, uuid, name)
                gpu.xid = self._last_xid.get(uuid)
                readings.append(gpu)
                mode = self._try(n.nvmlDeviceGetMigMode, handle)
                if not mode or mode[0] != n.NVML_DEVICE_MIG_ENABLE:
                    continue
                for j in range(n.nvmlDeviceGetMaxMigDeviceCount(handle)):
                    mig = self._try(n.nvmlDeviceGetMigDeviceHandleByIndex, handle, j)
                    if mig is None:
                        continue
                    r = self._read(mig, i, uuid, name)
                    r.mig_uuid = _text(n.nvmlDeviceGetUUID(mig))
                    r.gpu_instance_id = str(self._try(n.nvmlDeviceGetGpuInstanceId, mig) or "")
                    mig_name = _text(n.nvmlDeviceGetName(mig))
                    r.mig_profile = mig_name.rpartition("MIG ")[2] if "MIG " in mig_name else ""
                    readings.append(r)
        except Exception as exc:
            log.warning("NVML sampling failed: %s", exc)
            return []
        self.readings = readings
        ts = datetime.fromtimestamp(self._wall(), tz=UTC)
        return [self._to_sample(r, ts) for r in readings]

    def engine_uses(self, r: Reading) -> bool:
        """Whether the engine process has memory on this device."""
        if self.engine_pid:
            return self.engine_pid in r.processes
        return bool(r.processes)

    def _to_sample(self, r: Reading, ts: datetime) -> GpuSample:
        return GpuSample(
            ts=ts,
            node=self.node,
            gpu_uuid=r.uuid,
            gpu_model=r.name,
            mig_uuid=r.mig_uuid,
            mig_profile=r.mig_profile,
            replica=self.replica if self.engine_uses(r) else "",
            util_pct=min(100.0, r.util_pct or 0.0),
            mem_used_bytes=r.mem_used,
            mem_total_bytes=r.mem_total,
            power_w=r.power_w or 0.0,
            energy_j=(r.energy_mj or 0.0) / 1000.0,
            temp_c=r.temp_c or 0.0,
            sm_clock_mhz=r.sm_clock_mhz or 0.0,
        )

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("infermeter_nvml_up", "1 when NVML is initialised and readable")
        up.add_metric([], 1.0 if self.up else 0.0)
        yield up
        host = self.node
        series: list[tuple[str, str, str, Callable[[Reading], float | None]]] = [
            ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", lambda r: r.util_pct),
            ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).",
             lambda r: r.mem_used / _MIB),
            ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).",
             lambda r: (r.mem_total - r.mem_used) / _MIB),
            ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", lambda r: r.power_w),
            ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter",
             "Total energy consumption since boot (in mJ).", lambda r: r.energy_mj),
            ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", lambda r: r.temp_c),
            ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).",
             lambda r: r.sm_clock_mhz),
            ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "gauge", "Current clock throttle reasons.",
             lambda r: None if r.throttle_reasons is None else float(r.throttle_reasons)),
            ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter",
             "Total number of double-bit volatile ECC errors.",
             lambda r: None if r.ecc_dbe is None else float(r.ecc_dbe)),
            ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered.",
             lambda r: None if r.xid is None else float(r.xid)),
        ]  # fmt: skip
        for name, typ, doc, get in series:
            metric = Metric(name, doc, typ)
            for r in self.readings:
                value = get(r)
                if value is not None:
                    metric.add_sample(name, dict(zip(LABELS, r.labels(host), strict=True)), value)
            yield metric
        procs = GaugeMetricFamily(
            "infermeter_gpu_process_memory_bytes",
            "GPU memory used per process on each device",
            labels=[*LABELS, "pid"],
        )
        engine = GaugeMetricFamily(
            "infermeter_gpu_engine_attached",
            "1 when the engine process uses this device",
            labels=LABELS,
        )
        for r in self.readings:
            for pid, used in sorted(r.processes.items()):
                procs.add_metric([*r.labels(host), str(pid)], float(used))
            engine.add_metric(r.labels(host), 1.0 if self.engine_uses(r) else 0.0)
        yield procs
        yield engine


DCGM_COUNTERS = ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL")


def dcgm_exposition(body: bytes) -> bytes:
    """Undo client_python's ``_total`` on DCGM counters' HELP/TYPE lines (DCGM has none)."""
    for name in DCGM_COUNTERS:
        raw = name.encode()
        body = body.replace(b"# HELP " + raw + b"_total ", b"# HELP " + raw + b" ")
        body = body.replace(b"# TYPE " + raw + b"_total ", b"# TYPE " + raw + b" ")
    return body


def load_nvml() -> ModuleType | None:
    """``pynvml`` from nvidia-ml-py, or None when it cannot be imported."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml
