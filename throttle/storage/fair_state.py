"""Per-pool fair-share state of the memory backend, with O(log n) floor lookups.

The Redis backend keeps the same state in sorted sets (``reserve.lua``):

- ``counters``: tenant -> VTC counter;
- ``backlog``: the counters of tenants with work in flight in the pool (VTC's backlogged
  clients), ordered, so the *floor* (smallest counter among the other backlogged tenants)
  is the first or second entry;
- ``inflight``: tenant -> leases held in the pool;
- ``seen``: tenant -> last time it asked, to forget tenants idle for ``forget`` seconds.

Heaps are lazy (stale entries are skipped when they surface, and the heap is rebuilt when
it holds more than twice the live entries), which keeps every operation O(log n). A backlogged
counter that *grows* (every admission) needs no new entry: its old, smaller entry stays in
the heap and is moved to the current value when it surfaces, so every backlogged tenant
always has an entry no larger than its counter and a valid top entry is the minimum.
"""

from __future__ import annotations

import heapq

BACKLOG_SLACK = 64  # the backlog heap is rebuilt when it holds 2 x live entries + this many


class PoolFairState:
    """Counters, backlog order and last-seen times of the tenants of one pool."""

    __slots__ = (
        "backlog",
        "backlog_heap",
        "counters",
        "inflight",
        "seen",
        "seen_heap",
    )

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.backlog: dict[str, float] = {}
        self.inflight: dict[str, int] = {}
        self.seen: dict[str, float] = {}
        self.backlog_heap: list[tuple[float, str]] = []
        self.seen_heap: list[tuple[float, str]] = []

    # -- backlog order --------------------------------------------------------------------
    def set_backlog(self, tenant: str, counter: float) -> None:
        old = self.backlog.get(tenant)
        self.backlog[tenant] = counter
        if old is not None and counter >= old:
            return  # grown: its entry (<= old) is moved up when it surfaces
        heapq.heappush(self.backlog_heap, (counter, tenant))
        if len(self.backlog_heap) > 2 * len(self.backlog) + BACKLOG_SLACK:
            self.rebuild_backlog()

    def rebuild_backlog(self) -> None:
        """One heap entry per backlogged tenant, its current counter (drops stale ones)."""
        heap = self.backlog_heap
        heap[:] = [(v, t) for t, v in self.backlog.items()]
        heapq.heapify(heap)

    def _clean_top(self) -> None:
        heap = self.backlog_heap
        backlog = self.backlog
        while heap:
            value, name = heap[0]
            current = backlog.get(name)
            if current == value:
                return
            if current is not None and current > value:
                heapq.heapreplace(heap, (current, name))  # raised since it was pushed
            else:
                heapq.heappop(heap)

    def floor(self, tenant: str) -> float | None:
        """The smallest counter among the *other* backlogged tenants (None when none)."""
        self._clean_top()
        heap = self.backlog_heap
        if not heap:
            return None
        if heap[0][1] != tenant:
            return heap[0][0]
        top = heapq.heappop(heap)
        backlog = self.backlog
        while heap:  # _clean_top, dropping the tenant's own older entries (top is its own)
            value, name = heap[0]
            current = backlog.get(name)
            if name != tenant and current == value:
                break
            if name != tenant and current is not None and current > value:
                heapq.heapreplace(heap, (current, name))
            else:
                heapq.heappop(heap)
        second = heap[0][0] if heap else None
        heapq.heappush(heap, top)
        return second

    def set_counter(self, tenant: str, value: float) -> None:
        self.counters[tenant] = value
        if tenant in self.backlog:
            self.set_backlog(tenant, value)

    # -- leases in flight -----------------------------------------------------------------
    def acquire(self, tenant: str) -> None:
        count = self.inflight.get(tenant, 0) + 1
        self.inflight[tenant] = count
        if count == 1:
            self.set_backlog(tenant, self.counters.get(tenant, 0.0))

    def release(self, tenant: str) -> None:
        count = self.inflight.get(tenant, 0) - 1
        if count > 0:
            self.inflight[tenant] = count
            return
        self.inflight.pop(tenant, None)
        self.backlog.pop(tenant, None)
        if not self.backlog:
            self.backlog_heap.clear()  # nobody backlogged: every entry is stale

    # -- activity ---------------------------------------------------------------------------
    def touch(self, tenant: str, now: float, forget_before: float) -> None:
        """Record that ``tenant`` asked now; forget idle, non-backlogged tenants."""
        heap = self.seen_heap
        if heap and heap[0][0] < forget_before:
            keep: list[tuple[float, str]] = []
            while heap and heap[0][0] < forget_before:
                name = heapq.heappop(heap)[1]
                last = self.seen.get(name)
                if last is None:
                    continue
                if last >= forget_before:
                    keep.append((last, name))  # asked since: one entry per tenant, refreshed
                elif name in self.inflight:
                    keep.append((forget_before, name))  # backlogged: once its leases are gone
                else:
                    del self.seen[name]
                    self.counters.pop(name, None)
            for entry in keep:
                heapq.heappush(heap, entry)
        if tenant not in self.seen:
            heapq.heappush(heap, (now, tenant))
        self.seen[tenant] = now
