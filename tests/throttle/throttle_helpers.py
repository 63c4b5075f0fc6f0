"""Shared helpers of the throttle tests (the repo-wide ones are in tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import redis

from infermeter.throttle.storage.base import Storage
from infermeter.throttle.storage.failover import FailoverStorage
from infermeter.throttle.storage.memory import MemoryStorage
from infermeter.throttle.storage.redis import RedisStorage
from tests.conftest import ManualClock, free_port

MACHINE_REDIS = "redis://127.0.0.1:6379/0"

POLICY = """
unit = "usd"
default_tier = "free"
lease_s = 60
settle_grace_s = 600

[tiers.free]
rate = 0.6          # 0.01 usd/s
per_s = 60
burst = 0.05
concurrency = 3
daily_budget = 1.0
monthly_budget = 5.0
weight = 1.0

[tiers.pro]
rate = 60.0
per_s = 60
burst = 10.0
concurrency = 100
weight = 2.0

[tenants.acme]
tier = "pro"

[tenants.tiny]
tier = "free"
concurrency = 1

[models."m"]
prompt = 1.0e-5
completion = 2.0e-5
pool = "p1"

[models."*"]
prompt = 1.0e-6
completion = 1.0e-6

[pools.p1]
queue_per_replica = 5
kv_cache_usage = 0.8
ttft_p95_slo_s = 2.0
pressure_hold_s = 10
active_window_s = 30
fair_retry_s = 2

[pools.p1.autoscale]
min_replicas = 1
max_replicas = 8
tolerance = 0.1
scale_up_window_s = 0
scale_down_window_s = 300
targets = { num_requests_waiting = 5, kv_cache_usage_perc = 0.8 }
"""


def redis_uri(prefix: str | None = None) -> str:
    """The machine's Redis with a key prefix unique to the caller."""
    return f"{MACHINE_REDIS}?prefix=test:{prefix or uuid.uuid4().hex[:12]}&timeout_ms=3000"


# every store under throttle/storage/: the contract suite runs against each of them
BACKENDS = ("memory", "redis", "failover")


def open_backend(kind: str, uri: str) -> Storage:
    """A new handle of backend ``kind`` (one of :data:`BACKENDS`); the shared ones on the
    Redis at ``uri``, the failover one over a :class:`RedisStorage` there."""
    if kind == "memory":
        return MemoryStorage()
    if kind == "redis":
        return RedisStorage(uri)
    if kind == "failover":
        return FailoverStorage(RedisStorage(uri), ManualClock())
    raise ValueError(f"unknown backend {kind!r} (known: {BACKENDS})")


class RedisServer:
    """A private redis-server child process that tests may stop and restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix=t&timeout_ms=1500"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not installed: run ./dev.sh test")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
