"""In-process state (``memory://``): the default, and the local fallback when Redis is down.

:class:`MemoryStorage` is the :class:`Storage` protocol around the synchronous decision
core of :mod:`infermeter.throttle.storage.memory_ledger` (reservations, leases, budgets,
fair share), plus the engine signals, autoscale history and policy document of this
process. It offers the in-process decision path (``decide`` / ``settle_now``, see
:class:`Capabilities`): every operation runs to completion without awaiting, so on one event
loop it is atomic.
"""

from __future__ import annotations

from typing import Any

from infermeter.throttle.algorithms import gcra
from infermeter.throttle.storage.base import (
    Capabilities,
    Decision,
    ReserveRequest,
    Settlement,
    SettleUsage,
    Usage,
    UsageRequest,
)
from infermeter.throttle.storage.memory_ledger import FORGET_FACTOR, SWEEP_BATCH, MemoryLedger
from infermeter.throttle.storage.memory_tenant import WINDOW_GRACE_S, TenantState, window_spent

CAPABILITIES = Capabilities(in_process_decisions=True, shared_state=False)


class MemoryStorage(MemoryLedger):
    """All throttle state in dictionaries of this process."""

    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._signals: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {}
        self._history: dict[str, list[tuple[float, int]]] = {}
        self._policy: tuple[int, str] | None = None

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    # -- decisions -----------------------------------------------------------------------
    async def reserve(self, r: ReserveRequest) -> Decision:
        return self.decide(
            r.reservation_id,
            r.tenant,
            r.cost,
            r.now,
            r.lease_expires_at,
            r.record_expires_at,
            r.day_key,
            r.day_end,
            r.month_key,
            r.month_end,
            r.fair,
            (
                r.pool,
                r.rate_per_s,
                r.burst,
                r.concurrency,
                r.daily_budget,
                r.monthly_budget,
                r.weight,
                r.prompt_price,
                r.completion_price,
                r.cached_factor,
            ),
        )

    async def settle(self, reservation_id: str, used: SettleUsage, now: float) -> Settlement | None:
        return self.settle_now(
            reservation_id,
            used.prompt_tokens,
            used.cached_prompt_tokens,
            used.completion_tokens,
            now,
        )

    async def has_reservation(self, reservation_id: str) -> bool:
        return reservation_id in self._records

    async def usage(self, q: UsageRequest) -> Usage:
        me = self._tenants.get(q.tenant) or TenantState()
        in_flight = sum(1 for expires in me.held.values() if expires > q.now)
        remaining, reset = gcra.state(me.tat, q.now, q.rate_per_s, q.burst)
        counters = {
            pool: self._pools[pool].counters[q.tenant]
            for pool in q.pools
            if pool in self._pools and q.tenant in self._pools[pool].counters
        }
        return Usage(
            remaining,
            reset,
            in_flight,
            window_spent(me.windows, q.day_key, q.now),
            window_spent(me.windows, q.month_key, q.now),
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

    async def forget_pool(self, pool: str) -> None:
        self._signals.pop(pool, None)
        self._history.pop(pool, None)

    async def evict_idle(self, now: float, idle_s: float) -> int:
        return self.evict_idle_now(now, idle_s)

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


__all__ = [
    "CAPABILITIES",
    "FORGET_FACTOR",
    "SWEEP_BATCH",
    "WINDOW_GRACE_S",
    "MemoryStorage",
    "TenantState",
]
