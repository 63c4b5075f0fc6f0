"""Fairness experiment: one heavy tenant and nine light ones on a saturated pool.

A scripted pool (continuous batching approximated as processor sharing: up to ``max_batch``
requests share ``capacity`` cost units per second, the rest wait) is put in front of the real
:class:`infermeter.throttle.service.Throttle` with an injected clock. The pool's queue is pushed as
engine signals to a real :class:`infermeter.throttle.signals.PoolMonitor` every ``signal_every_s``,
which is what switches fair share on and off. Two runs on the same seeded arrivals:

- ``fair``: tier limits generous, fair share (VTC) under pressure;
- ``rpm``: a plain requests-per-minute limiter (every request costs 1 unit, same limit for
  every tenant), no fair share: the heavy tenant's requests are eight times larger, so a
  request count does not cap its compute.

Refused requests are dropped (the client got a 429). Run ``python -m
throttle.experiments.fairness --svg docs/throttle-fairness.svg`` to redraw the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
from dataclasses import dataclass, field

from infermeter.throttle.policy import Policy, load_policy_text
from infermeter.throttle.service import AdmitRequest, Throttle
from infermeter.throttle.signals import PoolMonitor
from infermeter.throttle.storage.memory import MemoryStorage

T0 = 1_800_000_000.0
HEAVY = "heavy"
LIGHTS = tuple(f"light{i}" for i in range(1, 10))

FAIR_POLICY = """
default_tier = "t"
[tiers.t]
rate = 6000          # 100 units/s: far above the pool, never binds
per_s = 60
burst = 8            # one heavy request; fair-share slack = burst / weight
[models."sim"]
prompt = 0.0
completion = 1.0     # one cost unit per token of work
pool = "pool"
[pools.pool]
queue_per_replica = 1    # saturated as soon as requests wait for a batch slot
pressure_hold_s = 1
active_window_s = 10
fair_retry_s = 1
"""

RPM_POLICY = """
default_tier = "t"
[tiers.t]
rate = 60            # 60 requests per minute for everyone
per_s = 60
burst = 2
[models."sim"]
prompt = 0.0
completion = 1.0
pool = "pool"
[pools.pool]
fair_share = false
"""


@dataclass(slots=True)
class _Job:
    tenant: str
    work: float
    left: float
    arrived: float
    reservation: str


@dataclass
class TenantStats:
    """What one tenant got."""

    sent: int = 0
    admitted: int = 0
    refused: int = 0
    served: float = 0.0  # cost units of completed work
    latencies: list[float] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class RunResult:
    """Outcome of one run: per-tenant stats and per-bin service of heavy vs light."""

    mode: str
    duration_s: float
    capacity: float
    tenants: dict[str, TenantStats]
    bins_s: float
    heavy_series: list[float]
    light_series: list[float]
    pressure_fraction: float

    def share(self, tenant: str) -> float:
        total = sum(t.served for t in self.tenants.values())
        return self.tenants[tenant].served / total if total else 0.0

    def light_share(self) -> float:
        return sum(self.share(t) for t in LIGHTS)

    def light_latency(self, q: float) -> float:
        merged = TenantStats(latencies=[x for t in LIGHTS for x in self.tenants[t].latencies])
        return merged.quantile(q)

    def max_min_shares(self) -> dict[str, float]:
        """The max-min fair split of the served work given what each tenant asked for."""
        demand = {
            name: stats.sent * (HEAVY_WORK if name == HEAVY else LIGHT_WORK) / self.duration_s
            for name, stats in self.tenants.items()
        }
        left, open_ = self.capacity, dict(demand)
        alloc = dict.fromkeys(demand, 0.0)
        while open_ and left > 1e-9:
            fair = left / len(open_)
            small = {n: d for n, d in open_.items() if d <= fair}
            if not small:
                for name in open_:
                    alloc[name] = fair
                break
            for name, d in small.items():
                alloc[name] = d
                left -= d
                del open_[name]
        total = sum(alloc.values())
        return {name: value / total for name, value in alloc.items()}

    def light_demand_served(self) -> float:
        """Served work of the light tenants over the work they asked for."""
        asked = sum(self.tenants[t].sent for t in LIGHTS) * LIGHT_WORK
        return sum(self.tenants[t].served for t in LIGHTS) / asked if asked else 0.0


LIGHT_WORK = 1.0
HEAVY_WORK = 8.0


async def run(
    mode: str,
    duration_s: float = 300.0,
    capacity: float = 10.0,
    max_batch: int = 8,
    heavy_rps: float = 3.0,
    light_rps: float = 0.4,
    dt: float = 0.02,
    signal_every_s: float = 0.5,
    seed: int = 1,
    bins_s: float = 10.0,
) -> RunResult:
    """Simulate ``duration_s`` seconds; ``mode`` is ``fair`` or ``rpm``."""
    clock = [T0]
    policy: Policy = load_policy_text(FAIR_POLICY if mode == "fair" else RPM_POLICY)
    storage = MemoryStorage()
    monitor = PoolMonitor(lambda: policy, storage, lambda: clock[0])
    throttle = Throttle(policy, storage, lambda: clock[0], monitor.pressure)
    rng = random.Random(seed)
    rates = {HEAVY: heavy_rps, **{name: light_rps for name in LIGHTS}}
    work = {HEAVY: HEAVY_WORK, **{name: LIGHT_WORK for name in LIGHTS}}
    stats = {name: TenantStats() for name in rates}
    next_arrival = {name: T0 + rng.expovariate(r) for name, r in rates.items()}
    running: list[_Job] = []
    waiting: list[_Job] = []
    nbins = math.ceil(duration_s / bins_s)
    heavy_series, light_series = [0.0] * nbins, [0.0] * nbins
    next_signal, pressure_steps, steps = T0, 0, 0
    end = T0 + duration_s
    while clock[0] < end:
        now = clock[0]
        for name, due in next_arrival.items():
            while due <= now:
                stats[name].sent += 1
                units = work[name]
                tokens = int(units) if mode == "fair" else 1
                result = await throttle.admit(
                    AdmitRequest(tenant=name, model="sim", max_tokens=tokens, prompt_tokens=0)
                )
                if result.allowed:
                    stats[name].admitted += 1
                    waiting.append(_Job(name, units, units, now, result.reservation_id))
                else:
                    stats[name].refused += 1
                due += rng.expovariate(rates[name])
            next_arrival[name] = due
        while waiting and len(running) < max_batch:
            running.append(waiting.pop(0))
        if running:
            share = capacity * dt / len(running)
            done = [job for job in running if job.left <= share + 1e-12]
            for job in running:
                job.left -= share
            for job in done:
                running.remove(job)
                stats[job.tenant].served += job.work
                stats[job.tenant].latencies.append(now + dt - job.arrived)
                index = min(nbins - 1, int((now - T0) / bins_s))
                series = heavy_series if job.tenant == HEAVY else light_series
                series[index] += job.work / bins_s
                tokens = int(job.work) if mode == "fair" else 1
                await throttle.settle(job.reservation, 0, 0, tokens)
        if now >= next_signal:
            await monitor.ingest(
                {
                    "pool": "pool",
                    "replica": "r0",
                    "ts": now,
                    "num_requests_running": float(len(running)),
                    "num_requests_waiting": float(len(waiting)),
                }
            )
            next_signal = now + signal_every_s
        pressure_steps += 1 if monitor.pressure("pool") else 0
        steps += 1
        clock[0] = now + dt
    return RunResult(
        mode,
        duration_s,
        capacity,
        stats,
        bins_s,
        heavy_series,
        light_series,
        pressure_steps / max(steps, 1),
    )


def summary(result: RunResult) -> str:
    """A one-paragraph text report of a run."""
    heavy = result.tenants[HEAVY]
    return (
        f"{result.mode}: light share {result.light_share():.1%} "
        f"(light demand served {result.light_demand_served():.1%}), heavy share "
        f"{result.share(HEAVY):.1%}; light latency p50 {result.light_latency(0.5):.2f} s "
        f"p95 {result.light_latency(0.95):.2f} s; heavy p50 {heavy.quantile(0.5):.2f} s; "
        f"heavy refused {heavy.refused}/{heavy.sent}; light refused "
        f"{sum(result.tenants[t].refused for t in LIGHTS)}/"
        f"{sum(result.tenants[t].sent for t in LIGHTS)}; "
        f"pressure {result.pressure_fraction:.0%} of the time; max-min fair light share "
        f"{sum(result.max_min_shares()[t] for t in LIGHTS):.1%}"
    )


def fair_latency_s(capacity: float = 10.0, tenants: int = 10) -> float:
    """A light request's latency if each tenant had exactly its share of the pool."""
    return LIGHT_WORK / (capacity / tenants)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--svg", default="", help="write the figure to this SVG file")
    parser.add_argument("--duration", type=float, default=300.0, help="simulated seconds")
    args = parser.parse_args(argv)
    fair = asyncio.run(run("fair", duration_s=args.duration))
    rpm = asyncio.run(run("rpm", duration_s=args.duration))
    alone = asyncio.run(run("fair", duration_s=args.duration, heavy_rps=1e-9))
    print(summary(fair))
    print(summary(rpm))
    print("lights alone: " + summary(alone))
    if args.svg:
        from infermeter.throttle.experiments.figure import fairness_svg

        with open(args.svg, "w", encoding="utf-8") as handle:
            handle.write(fairness_svg(fair, rpm, alone, fair_latency_s()))
        print(f"wrote {args.svg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
