"""Engine signals per pool: saturation (pressure) and the replica recommendation.

Collectors push one object per replica (``POST /v1/signals``, fields of
``docs/api-contracts.md``). The monitor keeps the latest of each replica in storage (shared
by every throttle replica on Redis), and on each refresh computes per pool:

- *pressure*: saturated when the mean waiting queue per replica reaches ``queue_per_replica``,
  or the waiting queue grew by more than one request per replica over
  ``queue_growth_window_s``, or the mean KV-cache usage reaches ``kv_cache_usage``, or the
  worst replica's TTFT p95 exceeds ``ttft_p95_slo_s``. Pressure holds ``pressure_hold_s``
  after the last saturated refresh so that fair share does not flap;
- the autoscale *recommendation* (:mod:`infermeter.throttle.algorithms.autoscale`).

Signals are trusted only as far as :class:`SignalLimits` allow: a sample's ``ts`` more than
``max_skew_s`` from the throttle's clock is refused (422 naming ``ts``: a far-future sample
would otherwise never go stale), a replica stops counting ``stale_after_s`` after its last
sample, a pool not named by the policy is forgotten ``evict_after_s`` after its last fresh
sample, and at most ``max_pools`` pools of ``max_replicas_per_pool`` replicas exist (429
naming ``pool`` / ``replica`` beyond).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infermeter.kernel.engine_signals import SIGNAL_NAMES
from infermeter.throttle.algorithms import autoscale
from infermeter.throttle.errors import ClockSkew, LimitReached, RequestError, UnknownPool
from infermeter.throttle.policy import Policy
from infermeter.throttle.storage.base import Storage

MAX_NAME = 200
MAX_SIGNAL = 1e12  # any engine signal above it is refused (sums of them stay finite)


@dataclass(frozen=True, slots=True)
class SignalLimits:
    """How far pushed signals are trusted, and how much of them is kept."""

    max_skew_s: float = 30.0
    max_pools: int = 1_000
    max_replicas_per_pool: int = 1_000
    evict_after_s: float = 3_600.0


def parse_signal(
    raw: Any, now: float, index: int | None = None, max_skew_s: float = math.inf
) -> dict[str, Any]:
    """Validate one pushed signal object; raises :class:`RequestError` naming the field
    (:class:`ClockSkew` for a ``ts`` outside ``max_skew_s``)."""
    where = f"[{index}]." if index is not None else ""
    if not isinstance(raw, Mapping):
        raise RequestError(where.rstrip(".") or "body", "must be a JSON object")
    out: dict[str, Any] = {}
    for name in ("pool", "replica"):
        value = raw.get(name)
        if not isinstance(value, str) or not value or len(value) > MAX_NAME:
            raise RequestError(f"{where}{name}", f"must be a non-empty string (<= {MAX_NAME})")
        out[name] = value
    model = raw.get("model", "")
    if not isinstance(model, str):
        raise RequestError(f"{where}model", "must be a string")
    out["model"] = model
    ts = raw.get("ts", now)
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise RequestError(f"{where}ts", "must be a number (epoch seconds)")
    if abs(ts - now) > max_skew_s:
        raise ClockSkew(
            f"{where}ts",
            f"is {ts - now:+.0f} s from the throttle's clock; accepted within "
            f"±{max_skew_s:g} s (check the collector's clock)",
        )
    out["ts"] = float(ts)
    for name in SIGNAL_NAMES:
        value = raw.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(f"{where}{name}", "must be a number")
        if not 0 <= value <= MAX_SIGNAL:
            raise RequestError(f"{where}{name}", f"must be a number in [0, {MAX_SIGNAL:g}]")
        if name == "kv_cache_usage_perc" and value > 1:
            raise RequestError(f"{where}{name}", "is a fraction: must be within [0, 1]")
        out[name] = float(value)
    return out


@dataclass(slots=True)
class PoolState:
    """What the monitor knows about a pool after its last refresh."""

    pool: str
    replicas: int = 0
    means: dict[str, float] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)
    saturated: list[str] = field(default_factory=list)  # conditions met at the last refresh
    last_saturated: float | None = None
    pressure: bool = False
    refreshed_at: float = 0.0
    recommendation: autoscale.Recommendation | None = None


class PoolMonitor:
    """Pressure flags (read on the decision path, from memory) and autoscale answers."""

    def __init__(
        self,
        policy: Callable[[], Policy],
        storage: Storage,
        now: Callable[[], float],
        limits: SignalLimits | None = None,
    ) -> None:
        self._policy = policy
        self._storage = storage
        self._now = now
        self.limits = limits or SignalLimits()
        self.states: dict[str, PoolState] = {}
        self._waiting: dict[str, deque[tuple[float, float]]] = {}
        self._since: dict[str, float] = {}
        self._last_fresh: dict[str, float] = {}
        self.received = 0
        self.refused = 0  # samples refused (skew, caps)
        self.evicted = 0  # pools forgotten after evict_after_s without a fresh sample

    def pressure(self, pool: str) -> bool:
        """Whether ``pool`` is saturated (cheap: no I/O)."""
        state = self.states.get(pool)
        return state.pressure if state is not None else False

    async def ingest(self, body: Any) -> list[str]:
        """Store pushed signals (an object or an array); returns the pools touched."""
        now = self._now()
        items = body if isinstance(body, list) else [body]
        try:
            parsed = [
                parse_signal(item, now, i if isinstance(body, list) else None,
                             self.limits.max_skew_s)
                for i, item in enumerate(items)
            ]  # fmt: skip
            await self._check_caps(parsed, now)
        except (RequestError, LimitReached):
            self.refused += len(items)
            raise
        pools: set[str] = set()
        for signal in parsed:
            await self._storage.put_signal(signal["pool"], signal["replica"], signal, signal["ts"])
            pools.add(signal["pool"])
        self.received += len(parsed)
        for pool in sorted(pools):
            await self.refresh(pool)
        return sorted(pools)

    async def _check_caps(self, parsed: list[dict[str, Any]], now: float) -> None:
        """Refuse a batch that would add a pool or replica beyond the caps."""
        policy = self._policy()
        known = set(await self._storage.pools())
        new_pools = {s["pool"] for s in parsed} - known
        if new_pools and len(known) + len(new_pools) > self.limits.max_pools:
            raise LimitReached(
                "pool", f"{len(known)} pools report signals; at most {self.limits.max_pools}"
            )
        by_pool: dict[str, set[str]] = {}
        for s in parsed:
            by_pool.setdefault(s["pool"], set()).add(s["replica"])
        for pool, replicas in by_pool.items():
            stale_after = policy.pool(pool).stale_after_s
            present = {s["replica"] for s in await self._storage.signals(pool, now - stale_after)}
            if len(present | replicas) > self.limits.max_replicas_per_pool:
                raise LimitReached(
                    "replica",
                    f"pool {pool!r} has {len(present)} replicas reporting; at most "
                    f"{self.limits.max_replicas_per_pool}",
                )

    async def known_pools(self) -> list[str]:
        declared = set(self._policy().doc.pools)
        return sorted(declared | set(await self._storage.pools()) | set(self.states))

    async def refresh_all(self) -> None:
        """Refresh every known pool, forgetting idle undeclared ones (run periodically)."""
        declared = set(self._policy().doc.pools)
        now = self._now()
        for pool in await self.known_pools():
            state = await self.refresh(pool)
            idle_for = now - self._last_fresh.setdefault(pool, now)
            if (
                pool not in declared
                and state.replicas == 0
                and (idle_for > self.limits.evict_after_s)
            ):
                await self.forget(pool)

    async def forget(self, pool: str) -> None:
        """Drop everything held about ``pool``."""
        await self._storage.forget_pool(pool)
        self.states.pop(pool, None)
        self._waiting.pop(pool, None)
        self._since.pop(pool, None)
        self._last_fresh.pop(pool, None)
        self.evicted += 1

    async def refresh(self, pool: str) -> PoolState:
        """Recompute a pool's aggregates and pressure from the latest fresh signals."""
        policy = self._policy()
        settings = policy.pool(pool)
        now = self._now()
        fresh = await self._storage.signals(pool, now - settings.stale_after_s)
        state = self.states.get(pool) or PoolState(pool)
        state.replicas = len(fresh)
        if fresh:
            self._last_fresh[pool] = now
        totals: dict[str, float] = {}
        worst: dict[str, float] = {}
        for signal in fresh:
            for name in SIGNAL_NAMES:
                if name in signal:
                    totals[name] = totals.get(name, 0.0) + signal[name]
                    worst[name] = max(worst.get(name, 0.0), signal[name])
        count = {n: sum(1 for s in fresh if n in s) for n in totals}
        state.totals = totals
        state.means = {n: totals[n] / count[n] for n in totals}
        saturated: list[str] = []
        waiting = totals.get("num_requests_waiting")
        if waiting is not None:
            history = self._waiting.setdefault(pool, deque())
            history.append((now, waiting))
            while history and history[0][0] < now - settings.queue_growth_window_s:
                history.popleft()
            if state.means["num_requests_waiting"] >= settings.queue_per_replica:
                saturated.append("queue")
            elif len(history) > 1 and waiting - history[0][1] > max(state.replicas, 1):
                saturated.append("queue_growing")
        if state.means.get("kv_cache_usage_perc", 0.0) >= settings.kv_cache_usage:
            saturated.append("kv_cache")
        if settings.ttft_p95_slo_s > 0 and worst.get("ttft_p95_s", 0.0) > settings.ttft_p95_slo_s:
            saturated.append("ttft")
        state.saturated = saturated
        if saturated:
            state.last_saturated = now
        state.pressure = (
            state.last_saturated is not None
            and now - state.last_saturated <= settings.pressure_hold_s
        )
        state.refreshed_at = now
        self.states[pool] = state
        return state

    async def recommend(self, pool: str) -> tuple[PoolState, autoscale.Recommendation]:
        """Refresh ``pool`` and compute its stabilised replica recommendation."""
        policy = self._policy()
        if pool not in policy.doc.pools and pool not in await self.known_pools():
            raise UnknownPool(pool)
        settings = policy.pool(pool).autoscale
        state = await self.refresh(pool)
        now = self._now()
        current = state.replicas
        raw, driver, desires = autoscale.raw_recommendation(
            current,
            state.means,
            settings.targets,
            settings.tolerance,
            settings.min_replicas,
            settings.max_replicas,
        )
        keep = max(settings.scale_up_window_s, settings.scale_down_window_s)
        history = await self._storage.record_recommendation(pool, now, raw, keep)
        since = self._since.setdefault(pool, now)
        desired = autoscale.stabilise(
            current,
            history,
            now,
            settings.scale_up_window_s,
            settings.scale_down_window_s,
            history_since=since,
        )
        desired = min(max(desired, settings.min_replicas), settings.max_replicas)
        rec = autoscale.Recommendation(current, raw, desired, driver, desires)
        state.recommendation = rec
        return state, rec


def keda_body(state: PoolState, rec: autoscale.Recommendation, now: float) -> dict[str, Any]:
    """The JSON KEDA's metrics-api scaler reads (``valueLocation: desired_replicas``)."""
    return {
        "pool": state.pool,
        "desired_replicas": rec.desired,
        "current_replicas": rec.current,
        "raw_desired_replicas": rec.raw_desired,
        "driver": rec.driver,
        "pressure": state.pressure,
        "saturated": list(state.saturated),
        "signals": {
            d.signal: {
                "observed": d.observed,
                "target": d.target,
                "ratio": round(d.ratio, 6),
                "desired": d.desired,
            }
            for d in rec.desires
        },
        "evaluated_at": now,
    }
