"""Seed data for the dashboards tests: a generated workload shipped to the REAL metering
service over its ingest API, then allocated by it; a real throttle fed engine signals and
admissions. Everything is relative to the current time, since the pages ask for "last N hours".
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from infermeter.kernel.records import GpuSample, UsageRecord

INGEST = "ingest-secret"
READ = "read-secret"
THROTTLE_API = "throttle-secret"
GIB = 1 << 30
TENANTS = {"acme": (1500, 200), "globex": (200, 600), "initech": (600, 150)}
REPLICAS = {  # name: (pool, NVML device name, MIG profile, device uuid, mig uuid)
    "chat-0": ("chat", "NVIDIA H100 80GB HBM3", "", "GPU-0000", ""),
    "chat-1": ("chat", "NVIDIA H100 80GB HBM3", "3g.40gb", "GPU-1111", "MIG-aaaa"),
}
METERING_TOML = {
    "replicas": {
        "chat-0": {"gpu": "h100-sxm", "pool": "chat", "model": "llama-3.1-8b"},
        "chat-1": {
            "gpu": "h100-sxm",
            "mig_profile": "3g.40gb",
            "pool": "chat",
            "model": "llama-3.1-8b",
        },
    },
    "budgets": {"acme": {"daily_usd": 0.05, "monthly_usd": 100.0}, "globex": {"daily_usd": 500.0}},
}
POLICY = """
unit = "usd"
default_tier = "free"

[tiers.free]
rate = 0.6
per_s = 60
burst = 0.0005
concurrency = 2
weight = 1.0

[tiers.pro]
rate = 60.0
per_s = 60
burst = 10.0
concurrency = 100
weight = 2.0

[tiers.team]
rate = 60.0
per_s = 60
burst = 1.0
concurrency = 1
weight = 1.0

[tenants.acme]
tier = "pro"

[tenants.initech]
tier = "team"

[models."llama-3.1-8b"]
prompt = 0.000001
completion = 0.00001
pool = "chat"

[pools.chat.autoscale]
min_replicas = 1
max_replicas = 8
targets = { num_requests_waiting = 4.0, kv_cache_usage_perc = 0.8 }
"""


@dataclass
class Workload:
    records: list[UsageRecord]
    samples: list[GpuSample]
    start: datetime
    end: datetime


def workload(now: float, hours: float = 3.0, seed: int = 11) -> Workload:
    """Requests on two replicas over the last ``hours`` (ending 5 minutes ago), a few cache
    hits, and one GPU sample a minute per device."""
    rng = random.Random(seed)
    end = datetime.fromtimestamp(now, tz=UTC).replace(second=0, microsecond=0) - timedelta(
        minutes=5
    )
    start = end - timedelta(hours=hours)
    records: list[UsageRecord] = []
    n = 0
    for replica, (pool, *_rest) in sorted(REPLICAS.items()):
        t = start + timedelta(seconds=rng.uniform(0, 20))
        busy_every = 3 if replica == "chat-0" else 1  # chat-0 idles most of the time
        while t < end - timedelta(seconds=60):
            tenant = rng.choice(sorted(TENANTS))
            p_mean, d_mean = TENANTS[tenant]
            prompt = max(1, int(rng.expovariate(1 / p_mean)))
            completion = max(1, int(rng.expovariate(1 / d_mean)))
            ttft = 0.05 + prompt * 4e-5
            itl = 0.009 + min(completion, 800) * 1e-5  # longer answers, fuller KV cache
            duration = ttft + completion * itl
            n += 1
            status = "cache_hit" if n % 37 == 0 else "ok"
            records.append(
                UsageRecord(
                    request_id=f"req-{n:05d}",
                    tenant=tenant,
                    api_key_id=f"key-{tenant}",
                    model="llama-3.1-8b",
                    pool=pool,
                    replica=replica,
                    stream=True,
                    status=status,
                    finish_reason="stop",
                    started_at=t,
                    first_token_at=t + timedelta(seconds=ttft),
                    finished_at=t + timedelta(seconds=duration),
                    queue_s=0.01,
                    prompt_tokens=prompt,
                    cached_prompt_tokens=prompt // 4,
                    completion_tokens=completion,
                    ttft_s=ttft,
                    e2e_s=duration,
                    itl_mean_s=itl,
                    itl_p50_s=itl,
                    upstream="self_hosted",
                    tags={"feature": rng.choice(["chat", "search", "summarize"])},
                )
            )
            gap = rng.choice([0.5, 2.0, 8.0]) * busy_every + (
                60.0 * busy_every if n % 5 == 0 else 0
            )
            t += timedelta(seconds=duration + gap)
    samples: list[GpuSample] = []
    minute = start
    energy = {r: 1e6 for r in REPLICAS}
    while minute < end:
        for replica, (_pool, device, mig, uuid, mig_uuid) in sorted(REPLICAS.items()):
            util = 20.0 + 10 * rng.random() if replica == "chat-0" else 70 + 20 * rng.random()
            power = 120 + 3 * util
            energy[replica] += power * 60
            samples.append(
                GpuSample(
                    ts=minute,
                    node="node-1",
                    gpu_uuid=uuid,
                    gpu_model=device,
                    mig_uuid=mig_uuid,
                    mig_profile=mig,
                    replica=replica,
                    util_pct=round(util, 2),
                    mem_used_bytes=(60 if not mig else 30) * GIB,
                    mem_total_bytes=(80 if not mig else 40) * GIB,
                    power_w=round(power, 2),
                    energy_j=energy[replica],
                    temp_c=55.0,
                    sm_clock_mhz=1755.0,
                )
            )
        minute += timedelta(minutes=1)
    return Workload(records, samples, start, end)


def seed_metering(url: str, load: Workload) -> dict[str, Any]:
    """Ship the workload through the real ingest API and allocate it; returns the result."""
    headers = {"Authorization": f"Bearer {INGEST}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for i in range(0, len(load.records), 2000):
            body = orjson.dumps([r.to_json() for r in load.records[i : i + 2000]])
            res = client.post(
                "/v1/usage", content=body, headers={"content-type": "application/json"}
            )
            assert res.status_code == 200 and not res.json()["rejected"], res.text[:500]
        body = orjson.dumps([s.to_json() for s in load.samples])
        res = client.post(
            "/v1/gpu-samples", content=body, headers={"content-type": "application/json"}
        )
        assert res.status_code == 200 and not res.json()["rejected"], res.text[:500]
        since = (load.start - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        until = datetime.fromtimestamp(time.time(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        res = client.post("/v1/admin/allocate", params={"since": since, "until": until})
        assert res.status_code == 200, res.text
        return dict(res.json())


def push_signals(url: str) -> None:
    """Fresh engine signals that push pool chat to scale up (throttle forgets stale ones)."""
    headers = {"Authorization": f"Bearer {THROTTLE_API}"}
    now = time.time()
    signals = [
        {
            "pool": "chat",
            "replica": r,
            "model": "llama-3.1-8b",
            "ts": now,
            "num_requests_running": 12,
            "num_requests_waiting": 10 + i,
            "kv_cache_usage_perc": 0.6,
            "prompt_tokens_per_s": 900.0,
            "generation_tokens_per_s": 400.0,
            "ttft_p50_s": 0.2,
            "ttft_p95_s": 0.9,
            "itl_p50_s": 0.012,
            "itl_p95_s": 0.03,
            "preemptions_per_s": 0.0,
        }
        for i, r in enumerate(sorted(REPLICAS))
    ]
    res = httpx.post(f"{url}/v1/signals", json=signals, headers=headers, timeout=10)
    assert res.status_code == 200, res.text


class SeedClock:
    """Throttle's clock: real time, set back while the seed replays admissions over the
    last hours (so its decision log spans the range the pages show), then real time again."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s


# Admissions per tenant at each seed step: acme (pro) always fits; globex (free tier, a burst
# smaller than one request) is refused by the rate limit after its first; initech (team tier,
# one request at a time, never settled here) by its concurrency limit until the lease expires.
ADMISSIONS = {"acme": 2, "globex": 4, "initech": 2}


def seed_throttle(url: str, clock: SeedClock, hours: float = 3.0, steps: int = 12) -> None:
    """Engine signals, and admissions (some refused) every ``hours / steps`` over the last
    ``hours``, replayed through ``clock`` (back to real time on return)."""
    headers = {"Authorization": f"Bearer {THROTTLE_API}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            for step in range(steps + 1):
                clock.offset_s = -hours * 3600 * (1 - step / steps)
                for tenant, count in ADMISSIONS.items():
                    for _ in range(count + step % 3):
                        body = {
                            "tenant": tenant,
                            "model": "llama-3.1-8b",
                            "prompt_tokens": 200,
                            "max_tokens": 100,
                        }
                        res = client.post("/v1/admit", json=body)
                        assert res.status_code in (200, 429), res.text
    finally:
        clock.offset_s = 0.0
    push_signals(url)


@dataclass
class Stack:
    metering_url: str
    throttle_url: str
    load: Workload
    allocation: dict[str, Any]

    def env(self) -> dict[str, str]:
        """What points a dashboard at this stack (as ``infermeter dashboard`` sets it)."""
        return {
            "INFERMETER__DASHBOARD__METERING_URL": self.metering_url,
            "INFERMETER__DASHBOARD__THROTTLE_URL": self.throttle_url,
            "INFERMETER__DASHBOARD__READ_TOKEN": READ,
            "INFERMETER__DASHBOARD__THROTTLE_TOKEN": THROTTLE_API,
            "INFERMETER__DASHBOARD__REFRESH_S": "0",
        }
