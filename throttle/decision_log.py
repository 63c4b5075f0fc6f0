"""Recent admission decisions per tenant, in bounded in-memory rings (per throttle replica).

Every decision of :class:`infermeter.throttle.service.Throttle` is appended as one tuple
``(ts, allowed, reason, cost)`` to its tenant's ring (``collections.deque`` with
``maxlen=max_entries``); at most ``max_tenants`` tenants are kept, the least recently
decided one is forgotten first. Appending is O(1) and allocates one tuple, so it stays on
the decision hot path. The log is per replica whatever the storage backend: with Redis
behind several replicas, each replica reports the decisions it took itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_MAX_TENANTS = 10_000
DEFAULT_MAX_ENTRIES = 1_000

Entry = tuple[float, bool, str, float]  # (ts, allowed, reason, cost)


@dataclass(frozen=True, slots=True)
class TenantActivity:
    """What the log knows about one tenant."""

    tenant: str
    decisions: int  # entries held (at most max_entries)
    allowed: int
    denied: int
    last_ts: float


class DecisionLog:
    """Bounded rings of recent decisions, one per tenant."""

    __slots__ = ("_logs", "max_entries", "max_tenants")

    def __init__(
        self, max_tenants: int = DEFAULT_MAX_TENANTS, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        if max_tenants < 1 or max_entries < 1:
            raise ValueError("max_tenants and max_entries must be >= 1")
        self.max_tenants = max_tenants
        self.max_entries = max_entries
        self._logs: dict[str, deque[Entry]] = {}

    def record(self, tenant: str, ts: float, allowed: bool, reason: str, cost: float) -> None:
        """Append one decision (the tenant becomes the most recently decided)."""
        logs = self._logs
        ring = logs.pop(tenant, None)
        if ring is None:
            ring = deque(maxlen=self.max_entries)
            if len(logs) >= self.max_tenants:
                del logs[next(iter(logs))]  # least recently decided
        logs[tenant] = ring
        ring.append((ts, allowed, reason, cost))

    def tenants(self) -> list[str]:
        """Tenants with decisions in the log, most recently decided last."""
        return list(self._logs)

    def since(self, tenant: str, since: float) -> list[Entry]:
        """The tenant's decisions with ``ts >= since``, oldest first."""
        ring = self._logs.get(tenant)
        if not ring:
            return []
        if ring[0][0] >= since:
            return list(ring)
        return [entry for entry in ring if entry[0] >= since]

    def activity(self, tenant: str) -> TenantActivity | None:
        """Counts over the entries held for ``tenant`` (None when it has none)."""
        ring = self._logs.get(tenant)
        if not ring:
            return None
        allowed = sum(1 for entry in ring if entry[1])
        return TenantActivity(tenant, len(ring), allowed, len(ring) - allowed, ring[-1][0])

    def evict_idle(self, before: float) -> int:
        """Forget tenants whose last decision is older than ``before``; returns how many
        (the least recently decided come first, so this stops at the first recent one)."""
        logs = self._logs
        gone = 0
        while logs:
            name = next(iter(logs))
            ring = logs[name]
            if ring and ring[-1][0] >= before:
                break
            del logs[name]
            gone += 1
        return gone

    def clear(self) -> None:
        self._logs.clear()


def counts_by_reason(entries: Iterable[Entry]) -> dict[str, int]:
    """``{"allow": n, "<deny reason>": n, ...}`` over ``entries``."""
    counts: dict[str, int] = {}
    for _, allowed, reason, _ in entries:
        key = "allow" if allowed else reason or "deny"
        counts[key] = counts.get(key, 0) + 1
    return counts
