"""In-process state (``memory://``): the default, and the local fallback when Redis is down.

Every operation runs to completion without awaiting, so on one event loop it is atomic.
Expired reservation records are swept lazily from a heap; budget counters of past windows
are dropped when read after their window ended.
"""

from __future__ import annotations

import heapq
from typing import Any

from throttle.algorithms import budgets, fairshare, gcra, leases
from throttle.algorithms.costs import usage_cost
from throttle.storage.base import (
    Decision,
    ReserveRequest,
    Settlement,
    SettleUsage,
    Usage,
    UsageRequest,
)
from throttle.storage.fair_state import PoolFairState

SWEEP_BATCH = 64
POOL_PURGE_BATCH = 64
FORGET_FACTOR = 10.0  # a tenant idle for 10 active windows leaves the pool's fair-share table
WINDOW_GRACE_S = 3600.0  # budget counters outlive their window by this much (late settles)


class MemoryStorage:
    """All throttle state in dictionaries of this process."""

    name = "memory"

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._lease_pool: dict[str, str] = {}  # reservation id -> pool of its lease
        self._lease_heaps: dict[str, list[tuple[float, str]]] = {}  # tenant -> (expiry, id)
        self._pools: dict[str, PoolFairState] = {}
        # tenant -> window key -> [spent, expires]
        self._spend: dict[str, dict[str, list[float]]] = {}
        # the admission request is the reservation record; settled ones map to their cost
        self._records: dict[str, ReserveRequest] = {}
        self._settled: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []
        self._signals: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {}
        self._history: dict[str, list[tuple[float, int]]] = {}
        self._policy: tuple[int, str] | None = None

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _spent(windows: dict[str, list[float]], key: str, now: float) -> float:
        entry = windows.get(key)
        if entry is None:
            return 0.0
        if entry[1] <= now:
            del windows[key]
            return 0.0
        return entry[0]

    @staticmethod
    def _add_spend(
        windows: dict[str, list[float]], key: str, amount: float, expires: float, now: float
    ) -> float:
        entry = windows.get(key)
        if entry is None:
            for old in [k for k, (_, until) in windows.items() if until <= now]:
                del windows[old]  # a new window began: drop the ones that ended
            windows[key] = [amount, expires]
            return amount
        entry[0] += amount
        if expires > entry[1]:
            entry[1] = expires
        return entry[0]

    def _pool(self, pool: str) -> PoolFairState:
        state = self._pools.get(pool)
        if state is None:
            state = self._pools[pool] = PoolFairState()
        return state

    def _released(self, tenant: str, rid: str) -> None:
        pool = self._lease_pool.pop(rid, None)
        if pool is not None:
            self._pool(pool).release(tenant)

    def _purge(self, tenant: str, held: dict[str, float], now: float) -> None:
        """Expire the tenant's leases, O(log n) each, from a lazily cleaned heap."""
        heap = self._lease_heaps.get(tenant)
        if not heap:
            return
        while heap and heap[0][0] <= now:
            expires, rid = heapq.heappop(heap)
            if held.get(rid) == expires:
                del held[rid]
                self._released(tenant, rid)
        if len(heap) > 2 * len(held) + 16:
            heap[:] = [(expires, rid) for rid, expires in held.items()]
            heapq.heapify(heap)

    def _purge_pool(self, state: PoolFairState, now: float) -> None:
        """Expire leases of every tenant of the pool (a crashed gateway's tenant included)."""
        heap = state.lease_heap
        purged = 0
        while heap and heap[0][0] <= now and purged < POOL_PURGE_BATCH:
            expires, rid, tenant = heapq.heappop(heap)
            held = self._leases.get(tenant)
            if held is not None and held.get(rid) == expires:
                del held[rid]
                self._released(tenant, rid)
                purged += 1

    def _sweep(self, now: float) -> None:
        heap = self._expiry
        for _ in range(SWEEP_BATCH):
            if not heap or heap[0][0] > now:
                return
            _, rid = heapq.heappop(heap)
            record = self._records.pop(rid, None)
            self._settled.pop(rid, None)
            if record is not None:
                held = self._leases.get(record.tenant)
                if held is not None and held.pop(rid, None) is not None:
                    self._released(record.tenant, rid)
                if held is not None and not held:
                    del self._leases[record.tenant]
                    self._lease_heaps.pop(record.tenant, None)

    # -- decisions -----------------------------------------------------------------------
    async def reserve(self, r: ReserveRequest) -> Decision:
        now = r.now
        tenant = r.tenant
        fair = r.fair
        expiry = self._expiry
        if expiry and expiry[0][0] <= now:
            self._sweep(now)
        state = self._pools.get(r.pool) or self._pool(r.pool)
        if state.lease_heap and state.lease_heap[0][0] <= now:
            self._purge_pool(state, now)
        held = self._leases.get(tenant)
        if held is None:
            held = self._leases[tenant] = {}
        elif held:
            self._purge(tenant, held, now)
        windows = self._spend.get(tenant)
        if windows is None:
            windows = self._spend[tenant] = {}
        day_entry = windows.get(r.day_key)
        day = (
            day_entry[0]
            if day_entry is not None and day_entry[1] > now
            else self._spent(windows, r.day_key, now)
        )
        month_entry = windows.get(r.month_key)
        month = (
            month_entry[0]
            if month_entry is not None and month_entry[1] > now
            else self._spent(windows, r.month_key, now)
        )
        tat = self._tat.get(tenant, now)
        state.touch(tenant, now, now - fair.active_window_s * FORGET_FACTOR)
        floor = state.floor(tenant)
        counters = state.counters
        before = counters.get(tenant)
        own = fairshare.lift(before or 0.0, tenant in state.inflight, floor)
        if before is None or own != before:
            state.set_counter(tenant, own)

        cost = r.cost
        rate_per_s = r.rate_per_s
        refusal: tuple[str, float, str] | None = None
        rate = None
        if not budgets.fits(day, cost, r.daily_budget):
            refusal = ("budget", r.day_end - now, "daily")
        elif not budgets.fits(month, cost, r.monthly_budget):
            refusal = ("budget", r.month_end - now, "monthly")
        elif not leases.has_slot(len(held), r.concurrency):
            refusal = ("concurrency", leases.retry_after(held, now), "")
        else:
            rate = gcra.check(tat, now, cost, rate_per_s, r.burst)
            if not rate.allowed:
                refusal = ("rate", rate.retry_after_s, "")
            elif not fairshare.admits(own, floor, fair):
                refusal = ("fair_share", fair.retry_s, "")
        if refusal is not None or rate is None:
            reason, retry, detail = refusal or ("", 0.0, "")
            remaining, reset = gcra.state(tat, now, rate_per_s, r.burst)
            return Decision(
                False, reason, retry, remaining, reset, len(held), day, month, own, floor, detail
            )
        # admit: charge everything
        rid = r.reservation_id
        lease_expires_at = r.lease_expires_at
        if rate_per_s > 0:
            self._tat[tenant] = rate.tat
        held[rid] = lease_expires_at
        heap = self._lease_heaps.get(tenant)
        if heap is None:
            heap = self._lease_heaps[tenant] = []
        heapq.heappush(heap, (lease_expires_at, rid))
        self._lease_pool[rid] = r.pool
        heapq.heappush(state.lease_heap, (lease_expires_at, rid, tenant))
        if (
            day_entry is not None
            and day_entry[1] > now
            and day_entry[1] >= r.day_end + WINDOW_GRACE_S
        ):
            day_entry[0] += cost  # the common case: the window's counter exists
            day = day_entry[0]
        else:
            day = self._add_spend(windows, r.day_key, cost, r.day_end + WINDOW_GRACE_S, now)
        if (
            month_entry is not None
            and month_entry[1] > now
            and month_entry[1] >= r.month_end + WINDOW_GRACE_S
        ):
            month_entry[0] += cost
            month = month_entry[0]
        else:
            month = self._add_spend(windows, r.month_key, cost, r.month_end + WINDOW_GRACE_S, now)
        own = fairshare.charge(own, cost, r.weight, floor, fair.max_lead)
        if tenant in state.backlog:
            state.set_counter(tenant, own)
        else:
            counters[tenant] = own  # acquire() enters it in the backlog order
        state.acquire(tenant)
        self._records[rid] = r
        heapq.heappush(expiry, (r.record_expires_at, rid))
        return Decision(
            True, "", 0.0, rate.remaining, rate.reset_s, len(held), day, month, own, floor
        )

    async def settle(self, reservation_id: str, used: SettleUsage, now: float) -> Settlement | None:
        record = self._records.get(reservation_id)
        if record is None or record.record_expires_at <= now:
            return None
        done = self._settled.get(reservation_id)
        if done is not None:
            return Settlement(reservation_id, record.tenant, record.pool, record.cost, done, True)
        actual = usage_cost(
            used.prompt_tokens,
            used.cached_prompt_tokens,
            used.completion_tokens,
            record.prompt_price,
            record.completion_price,
            record.cached_factor,
        )
        delta = actual - record.cost
        if record.rate_per_s > 0:
            tat = self._tat.get(record.tenant, now)
            self._tat[record.tenant] = gcra.adjust(tat, now, delta, record.rate_per_s)
        windows = self._spend.get(record.tenant)
        if windows is not None:
            entry = windows.get(record.day_key)
            if entry is not None:
                entry[0] = max(0.0, entry[0] + delta)
            entry = windows.get(record.month_key)
            if entry is not None:
                entry[0] = max(0.0, entry[0] + delta)
        state = self._pools.get(record.pool)
        if state is not None and record.tenant in state.counters:
            counter = max(0.0, state.counters[record.tenant] + delta / record.weight)
            state.set_counter(record.tenant, counter)
        held = self._leases.get(record.tenant)
        if held is not None and held.pop(reservation_id, None) is not None:
            self._released(record.tenant, reservation_id)
        self._settled[reservation_id] = actual
        return Settlement(reservation_id, record.tenant, record.pool, record.cost, actual)

    async def has_reservation(self, reservation_id: str) -> bool:
        return reservation_id in self._records

    async def usage(self, q: UsageRequest) -> Usage:
        held = self._leases.get(q.tenant, {})
        in_flight = sum(1 for expires in held.values() if expires > q.now)
        remaining, reset = gcra.state(self._tat.get(q.tenant, q.now), q.now, q.rate_per_s, q.burst)
        counters = {
            pool: self._pools[pool].counters[q.tenant]
            for pool in q.pools
            if pool in self._pools and q.tenant in self._pools[pool].counters
        }
        return Usage(
            remaining,
            reset,
            in_flight,
            self._spent(self._spend.get(q.tenant, {}), q.day_key, q.now),
            self._spent(self._spend.get(q.tenant, {}), q.month_key, q.now),
            counters,
        )

    # -- signals, autoscale history, policy ----------------------------------------------
    async def put_signal(self, pool: str, replica: str, payload: dict[str, Any], ts: float) -> None:
        self._signals.setdefault(pool, {})[replica] = (ts, payload)

    async def signals(self, pool: str, since: float) -> list[dict[str, Any]]:
        replicas = self._signals.get(pool, {})
        for name in [n for n, (ts, _) in replicas.items() if ts < since]:
            del replicas[name]
        return [payload for _, payload in replicas.values()]

    async def pools(self) -> list[str]:
        return sorted(self._signals)

    async def record_recommendation(
        self, pool: str, ts: float, value: int, keep_s: float
    ) -> list[tuple[float, int]]:
        history = [(t, v) for t, v in self._history.get(pool, []) if t >= ts - keep_s]
        history.append((ts, value))
        self._history[pool] = history
        return list(history)

    async def put_policy(self, text: str) -> int:
        version = (self._policy[0] if self._policy else 0) + 1
        self._policy = (version, text)
        return version

    async def get_policy(self) -> tuple[int, str] | None:
        return self._policy

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
