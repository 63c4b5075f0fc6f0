"""FAKE NVML: stands in for ``pynvml`` where there is no GPU (this machine has none).

It implements the subset of the nvidia-ml-py API the collector's sampler calls, with the
real module's constants and error class, over a scripted inventory: an H100 with MIG enabled
(two instances) and an A100 without MIG on which the engine process (pid 4242) runs and which
has one pending XID 79 event. ``advance(seconds)`` moves the energy counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

NVMLError = pynvml.NVMLError
NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC
NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE
nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError
GIB = 1024**3


@dataclass
class FakeDevice:
    uuid: str
    name: str
    util: int | None
    used: int
    total: int
    power_mw: int | None
    energy_mj: int | None
    temp: int | None
    sm_mhz: int | None
    throttle: int | None = 0
    ecc: int | None = 0
    processes: list[tuple[int, int]] = field(default_factory=list)
    migs: list[FakeDevice] = field(default_factory=list)
    gi_id: int = 0


def _unsupported() -> NVMLError:
    return NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


H100 = FakeDevice(
    "GPU-h100-0000",
    "NVIDIA H100 80GB HBM3",
    55,
    60 * GIB,
    80 * GIB,
    350_000,
    1_000_000_000,
    61,
    1755,
    throttle=4,
    ecc=0,
    migs=[
        FakeDevice(
            "MIG-aaaa",
            "NVIDIA H100 80GB HBM3 MIG 3g.40gb",
            None,
            30 * GIB,
            40 * GIB,
            None,
            None,
            None,
            None,
            throttle=None,
            ecc=None,
            processes=[(777, 29 * GIB)],
            gi_id=1,
        ),
        FakeDevice(
            "MIG-bbbb",
            "NVIDIA H100 80GB HBM3 MIG 4g.40gb",
            None,
            1 * GIB,
            40 * GIB,
            None,
            None,
            None,
            None,
            throttle=None,
            ecc=None,
            gi_id=2,
        ),
    ],
)
A100 = FakeDevice(
    "GPU-a100-1111",
    "NVIDIA A100-SXM4-40GB",
    97,
    38 * GIB,
    40 * GIB,
    400_000,
    5_000_000,
    70,
    1410,
    throttle=0,
    ecc=2,
    processes=[(4242, 36 * GIB)],
)
DEVICES = [H100, A100]
_pending_xids: list[tuple[FakeDevice, int]] = [(A100, 79)]
initialised = False


def reset() -> None:
    global initialised
    initialised = False
    _pending_xids[:] = [(A100, 79)]
    H100.energy_mj = 1_000_000_000
    A100.energy_mj = 5_000_000


def advance(seconds: float) -> None:
    for dev in DEVICES:
        if dev.energy_mj is not None and dev.power_mw is not None:
            dev.energy_mj += int(dev.power_mw * seconds)


def nvmlInit() -> None:
    global initialised
    initialised = True


def nvmlDeviceGetCount() -> int:
    return len(DEVICES)


def nvmlDeviceGetHandleByIndex(i: int) -> FakeDevice:
    return DEVICES[i]


def nvmlDeviceGetUUID(h: FakeDevice) -> str:
    return h.uuid


def nvmlDeviceGetName(h: FakeDevice) -> str:
    return h.name


def nvmlDeviceGetUtilizationRates(h: FakeDevice) -> Any:
    if h.util is None:
        raise _unsupported()
    return SimpleNamespace(gpu=h.util, memory=10)


def nvmlDeviceGetMemoryInfo(h: FakeDevice) -> Any:
    return SimpleNamespace(used=h.used, total=h.total, free=h.total - h.used)


def _value(v: int | None) -> int:
    if v is None:
        raise _unsupported()
    return v


def nvmlDeviceGetPowerUsage(h: FakeDevice) -> int:
    return _value(h.power_mw)


def nvmlDeviceGetTotalEnergyConsumption(h: FakeDevice) -> int:
    return _value(h.energy_mj)


def nvmlDeviceGetTemperature(h: FakeDevice, sensor: int) -> int:
    assert sensor == NVML_TEMPERATURE_GPU
    return _value(h.temp)


def nvmlDeviceGetClockInfo(h: FakeDevice, clock: int) -> int:
    assert clock == NVML_CLOCK_SM
    return _value(h.sm_mhz)


def nvmlDeviceGetCurrentClocksThrottleReasons(h: FakeDevice) -> int:
    return _value(h.throttle)


def nvmlDeviceGetTotalEccErrors(h: FakeDevice, kind: int, counter: int) -> int:
    assert (kind, counter) == (NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC)
    return _value(h.ecc)


def nvmlDeviceGetComputeRunningProcesses(h: FakeDevice) -> list[Any]:
    return [SimpleNamespace(pid=pid, usedGpuMemory=mem) for pid, mem in h.processes]


def nvmlDeviceGetMigMode(h: FakeDevice) -> list[int]:
    if h not in DEVICES:
        raise _unsupported()
    return [1, 1] if h.migs else [0, 0]


def nvmlDeviceGetMaxMigDeviceCount(h: FakeDevice) -> int:
    return 7 if h.migs else 0


def nvmlDeviceGetMigDeviceHandleByIndex(h: FakeDevice, j: int) -> FakeDevice:
    if j >= len(h.migs):
        raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
    return h.migs[j]


def nvmlDeviceGetGpuInstanceId(h: FakeDevice) -> int:
    return h.gi_id


def nvmlEventSetCreate() -> object:
    return object()


def nvmlDeviceRegisterEvents(h: FakeDevice, types: int, event_set: object) -> None:
    assert types == nvmlEventTypeXidCriticalError


def nvmlEventSetWait(event_set: object, timeout_ms: int) -> Any:
    if not _pending_xids:
        raise NVMLError(pynvml.NVML_ERROR_TIMEOUT)
    dev, xid = _pending_xids.pop(0)
    return SimpleNamespace(device=dev, eventData=xid, eventType=nvmlEventTypeXidCriticalError)
