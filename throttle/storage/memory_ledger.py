"""The in-process decision core of ``memory://``: reserve and settle, synchronously.

:class:`MemoryLedger` holds every tenant's state (:class:`TenantState`, one lookup per
decision), one fair-share table per pool and the reservation records, and decides without
awaiting, so on one event loop each call is atomic. Leases of every tenant and pool expire
from one heap, all those due before each decision (amortized O(log n) per lease: each is
pushed and popped once), so a tenant's in-flight count is exact; reservation records are
swept lazily from a second heap, budget counters of past windows are dropped when read
after their window ended. :class:`infermeter.throttle.storage.memory.MemoryStorage` puts
the :class:`Storage` protocol around it.
"""

from __future__ import annotations

import math
from heapq import heapify, heappop, heappush

from infermeter.throttle.algorithms import gcra, leases
from infermeter.throttle.algorithms.fairshare import FairParams
from infermeter.throttle.storage.base import Decision, Settlement, Terms
from infermeter.throttle.storage.fair_state import BACKLOG_SLACK, PoolFairState
from infermeter.throttle.storage.memory_tenant import (
    WINDOW_GRACE_S,
    Record,
    TenantState,
    add_spend,
    window_spent,
)

_new = tuple.__new__

SWEEP_BATCH = 64
FORGET_FACTOR = 10.0  # a tenant idle for 10 active windows leaves the pool's fair-share table


class MemoryLedger:
    """Reservations, leases, budgets and fair share in dictionaries of this process."""

    def __init__(self) -> None:
        self._tenants: dict[str, TenantState] = {}
        self._pools: dict[str, PoolFairState] = {}
        # reservation id -> record (see Record); settled ones map to their actual cost
        self._records: dict[str, Record] = {}
        self._settled: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []  # (record expiry, id)
        self._lapse: list[tuple[float, str]] = []  # (lease expiry, id), lazily deleted

    def _tenant(self, tenant: str) -> TenantState:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = TenantState()
        return state

    def _pool(self, pool: str) -> PoolFairState:
        state = self._pools.get(pool)
        if state is None:
            state = self._pools[pool] = PoolFairState()
        return state

    def _release(self, tenant: str, pool: str) -> None:
        state = self._pools.get(pool)
        if state is not None:
            state.release(tenant)

    def _expire_leases(self, now: float) -> None:
        """Release every lease whose expiry is at or before ``now`` (any tenant, any pool:
        a crashed gateway's leases lapse here)."""
        heap = self._lapse
        records = self._records
        tenants = self._tenants
        while heap and heap[0][0] <= now:
            expires, rid = heappop(heap)
            record = records.get(rid)
            if record is None:
                continue  # swept with its record
            me = tenants.get(record[0])
            if me is not None and me.held.get(rid) == expires:  # else settled and evicted
                del me.held[rid]
                self._release(record[0], record[5][0])

    def _sweep(self, now: float) -> None:
        heap = self._expiry
        for _ in range(SWEEP_BATCH):
            if not heap or heap[0][0] > now:
                return
            _, rid = heappop(heap)
            record = self._records.pop(rid, None)
            self._settled.pop(rid, None)
            if record is not None:
                me = self._tenants.get(record[0])
                if me is not None and me.held.pop(rid, None) is not None:
                    self._release(record[0], record[5][0])

    # -- decisions -----------------------------------------------------------------------
    def decide(
        self,
        rid: str,
        tenant: str,
        cost: float,
        now: float,
        lease_expires_at: float,
        record_expires_at: float,
        day_key: str,
        day_end: float,
        month_key: str,
        month_end: float,
        fair: FairParams,
        terms: Terms,
    ) -> Decision:
        """:meth:`Storage.reserve` without the coroutine and the request object: the fields of
        :class:`ReserveRequest` as arguments, the constant ones as one :data:`Terms` tuple
        (built once per tenant, model and pool by the caller). The algorithms of
        :mod:`infermeter.throttle.algorithms` (GCRA, budgets, leases, fair share) are inlined here,
        the one hot path of the in-process throttle; the contract suite holds both to the same
        results."""
        (
            pool,
            rate_per_s,
            burst,
            concurrency,
            daily_budget,
            monthly_budget,
            weight,
            _,
            _,
            _,
        ) = terms
        expiry = self._expiry
        if expiry and expiry[0][0] <= now:
            self._sweep(now)
        lapse = self._lapse
        if lapse and lapse[0][0] <= now:
            self._expire_leases(now)
        state = self._pools.get(pool)
        if state is None:
            state = self._pool(pool)
        me = self._tenants.get(tenant)
        if me is None:
            me = self._tenant(tenant)
        me.last = now
        if daily_budget > 0 or monthly_budget > 0:
            me.budgeted = True
        held = me.held
        windows = me.windows
        day_entry = windows.get(day_key)
        day = (
            day_entry[0]
            if day_entry is not None and day_entry[1] > now
            else window_spent(windows, day_key, now)
        )
        month_entry = windows.get(month_key)
        month = (
            month_entry[0]
            if month_entry is not None and month_entry[1] > now
            else window_spent(windows, month_key, now)
        )
        tat = me.tat
        # fair share: touch, floor and VTC lift (PoolFairState's common cases inline)
        seen = state.seen
        seen_heap = state.seen_heap
        forget_before = now - fair.active_window_s * FORGET_FACTOR
        if tenant in seen and not (seen_heap and seen_heap[0][0] < forget_before):
            seen[tenant] = now
        else:
            state.touch(tenant, now, forget_before)
        backlog = state.backlog
        floor: float | None = None
        if backlog:  # else nobody is backlogged: no floor
            top = state.backlog_heap[0]
            if top[1] != tenant and backlog.get(top[1]) == top[0]:
                floor = top[0]
            else:
                floor = state.floor(tenant)
        counters = state.counters
        before = counters.get(tenant)
        own = before or 0.0
        if floor is not None and floor > own and tenant not in state.inflight:
            own = floor
        if before is None or own != before:
            state.set_counter(tenant, own)

        refusal: tuple[str, float, str] | None = None
        new_tat = tat
        remaining = math.inf
        reset = 0.0
        if daily_budget > 0 and day + cost > daily_budget:
            refusal = ("budget", day_end - now, "daily")
        elif monthly_budget > 0 and month + cost > monthly_budget:
            refusal = ("budget", month_end - now, "monthly")
        elif concurrency > 0 and len(held) >= concurrency:
            refusal = ("concurrency", leases.retry_after(held, now), "")
        else:
            if rate_per_s > 0 and rate_per_s != math.inf:  # GCRA (gcra.check)
                t = 1.0 / rate_per_s
                tau = burst * t
                base = tat if tat > now else now
                new_tat = base + cost * t
                ahead = new_tat - now
                if ahead <= tau or tat <= now:
                    remaining = (tau - ahead) / t
                    if remaining < 0.0:
                        remaining = 0.0
                    reset = ahead if ahead > 0.0 else 0.0
                else:
                    refusal = ("rate", ahead - tau, "")
            if refusal is None and fair.pressure and floor is not None and own - floor > fair.slack:
                refusal = ("fair_share", fair.retry_s, "")
        if refusal is not None:
            reason, retry, detail = refusal
            remaining, reset = gcra.state(tat, now, rate_per_s, burst)
            return _new(
                Decision,
                (False, reason, retry, remaining, reset, len(held), day, month, own, floor, detail),
            )
        # admit: charge everything
        if rate_per_s > 0:
            me.tat = new_tat
        held[rid] = lease_expires_at
        heappush(lapse, (lease_expires_at, rid))
        kept_until = day_end + WINDOW_GRACE_S
        if day_entry is not None and day_entry[1] > now and day_entry[1] >= kept_until:
            day_entry[0] += cost  # the common case: the window's counter exists
            day = day_entry[0]
        else:
            day = add_spend(windows, day_key, cost, kept_until, now)
        kept_until = month_end + WINDOW_GRACE_S
        if month_entry is not None and month_entry[1] > now and month_entry[1] >= kept_until:
            month_entry[0] += cost
            month = month_entry[0]
        else:
            month = add_spend(windows, month_key, cost, kept_until, now)
        charged = own + cost / weight  # fairshare.charge
        if floor is not None and fair.max_lead > 0:
            cap = floor + fair.max_lead
            if cap < own:
                cap = own
            if cap < charged:
                charged = cap
        own = charged
        counters[tenant] = own
        inflight = state.inflight
        count = inflight.get(tenant, 0) + 1
        inflight[tenant] = count
        if count == 1:  # acquire: it enters the backlog (PoolFairState.set_backlog)
            backlog[tenant] = own
            backlog_heap = state.backlog_heap
            heappush(backlog_heap, (own, tenant))
            if len(backlog_heap) > 2 * len(backlog) + BACKLOG_SLACK:
                state.rebuild_backlog()
        elif tenant in backlog:
            if own >= backlog[tenant]:
                backlog[tenant] = own  # grown: no heap entry (see PoolFairState)
            else:
                state.set_backlog(tenant, own)
        self._records[rid] = (tenant, cost, record_expires_at, day_key, month_key, terms)
        heappush(expiry, (record_expires_at, rid))
        return _new(
            Decision,
            (True, "", 0.0, remaining, reset, len(held), day, month, own, floor, ""),
        )

    def settle_now(
        self,
        reservation_id: str,
        prompt_tokens: int,
        cached_prompt_tokens: int,
        completion_tokens: int,
        now: float,
    ) -> Settlement | None:
        """:meth:`Storage.settle` without the coroutine and the usage object."""
        record = self._records.get(reservation_id)
        if record is None:
            return None
        tenant, estimate, record_expires_at, day_key, month_key, terms = record
        if record_expires_at <= now:
            return None
        done = self._settled.get(reservation_id)
        pool, rate_per_s, _, _, _, _, weight, prompt_price, completion_price, cached_factor = terms
        if done is not None:
            return _new(Settlement, (reservation_id, tenant, pool, estimate, done, True))
        cached = cached_prompt_tokens if cached_prompt_tokens < prompt_tokens else prompt_tokens
        actual = (
            (prompt_tokens - cached) + cached * cached_factor
        ) * prompt_price + completion_tokens * completion_price  # costs.usage_cost
        delta = actual - estimate
        me = self._tenants.get(tenant) or self._tenant(tenant)  # evicted since: fresh
        if rate_per_s > 0 and rate_per_s != math.inf:  # gcra.adjust
            tat = me.tat
            moved = (tat if tat > now else now) + delta * (1.0 / rate_per_s)
            me.tat = moved if moved > now else now
        windows = me.windows
        entry = windows.get(day_key)
        if entry is not None:
            spent = entry[0] + delta
            entry[0] = spent if spent > 0.0 else 0.0
        entry = windows.get(month_key)
        if entry is not None:
            spent = entry[0] + delta
            entry[0] = spent if spent > 0.0 else 0.0
        state = self._pools.get(pool)
        if me.held.pop(reservation_id, None) is not None and state is not None:
            state.release(tenant)  # first: a tenant leaving the backlog
        if state is not None:  # has no backlog entry to reorder below
            counter = state.counters.get(tenant)
            if counter is not None:
                counter += delta / weight
                state.set_counter(tenant, counter if counter > 0.0 else 0.0)
        self._settled[reservation_id] = actual
        return _new(Settlement, (reservation_id, tenant, pool, estimate, actual, False))

    # -- eviction ------------------------------------------------------------------------
    def evict_idle_now(self, now: float, idle_s: float) -> int:
        """Forget every tenant idle for ``idle_s`` whose state can change no later decision
        (:meth:`TenantState.idle`), and its rows in the pools' fair-share tables (a pool's
        table goes with its last tenant); returns how many tenants were forgotten.

        A late settle of an evicted tenant finds fresh state and still applies its delta."""
        self._expire_leases(now)  # lapsed leases are no longer held
        while self._expiry and self._expiry[0][0] <= now:
            self._sweep(now)
        before = now - idle_s
        gone = [name for name, me in self._tenants.items() if me.idle(now, before)]
        for name in gone:
            del self._tenants[name]
        for pool, state in list(self._pools.items()):
            idle = [
                n for n, seen in state.seen.items() if seen < before and n not in state.inflight
            ]
            for name in idle:
                del state.seen[name]
                state.counters.pop(name, None)
            if idle:  # one heap entry per tenant still seen
                state.seen_heap[:] = [(seen, name) for name, seen in state.seen.items()]
                heapify(state.seen_heap)
            if not state.seen and not state.inflight and not state.counters:
                del self._pools[pool]
        return len(gone)
