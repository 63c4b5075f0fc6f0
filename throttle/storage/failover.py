"""Keep deciding when the shared backend is unreachable.

:class:`FailoverStorage` sends every operation to the primary (Redis). When the primary is
unreachable it marks itself degraded, counts it, and decides from a local
:class:`MemoryStorage` instead (fail-open, the default: limits still hold per throttle
replica, so the fleet-wide overshoot is bounded by the number of replicas), or refuses every
admission (fail-closed). A probe (:meth:`probe`, run periodically by the app) brings the
primary back by itself. Reservations made locally are settled locally.

Its :class:`Capabilities` are those of the side in force: ``degraded`` while deciding from
the fallback (or when the side in force is itself degraded), ``shared_state`` that of the
primary. It never offers the in-process decision path, whichever side is active: each
decision has to go through :meth:`FailoverStorage.reserve`, which tries the primary, counts
local decisions and refuses when fail-closed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from infermeter.throttle.errors import StorageUnavailable
from infermeter.throttle.storage.base import (
    Capabilities,
    Decision,
    ReserveRequest,
    Settlement,
    SettleUsage,
    Storage,
    Usage,
    UsageRequest,
)
from infermeter.throttle.storage.memory import MemoryStorage

log = logging.getLogger(__name__)
T = TypeVar("T")


class FailoverStorage:
    """A primary backend with a local in-memory fallback."""

    def __init__(
        self,
        primary: Storage,
        now: Callable[[], float],
        fail_closed: bool = False,
        local: MemoryStorage | None = None,
    ) -> None:
        self.primary = primary
        self.local = local or MemoryStorage()
        self.name = primary.name
        self.fail_closed = fail_closed
        self._now = now
        self.degraded = False
        self.degraded_since: float | None = None
        self.failures = 0
        self.local_decisions = 0
        self.recoveries = 0
        self.last_error = ""

    @property
    def capabilities(self) -> Capabilities:
        active = self.local if self.degraded else self.primary
        return Capabilities(
            in_process_decisions=False,
            shared_state=self.primary.capabilities.shared_state,
            degraded=self.degraded or active.capabilities.degraded,
        )

    def _down(self, exc: Exception) -> None:
        self.failures += 1
        self.last_error = str(exc)
        if not self.degraded:
            log.error("state backend %s unreachable, deciding locally: %s", self.name, exc)
            self.degraded = True
            self.degraded_since = self._now()

    async def _run(self, op: Callable[[Storage], Awaitable[T]]) -> T:
        if not self.degraded:
            try:
                return await op(self.primary)
            except StorageUnavailable as exc:
                self._down(exc)
        self.local_decisions += 1
        return await op(self.local)

    async def probe(self) -> bool:
        """Try the primary; leave degraded mode when it answers. Returns whether it is up."""
        try:
            await self.primary.ping()
        except StorageUnavailable as exc:
            self.last_error = str(exc)
            if not self.degraded:
                self._down(exc)
            return False
        if self.degraded:
            log.warning("state backend %s is back", self.name)
            self.degraded = False
            self.degraded_since = None
            self.recoveries += 1
        return True

    async def reserve(self, request: ReserveRequest) -> Decision:
        if self.degraded and self.fail_closed:
            self.local_decisions += 1
            return Decision(False, "unavailable", 1.0, 0.0, 0.0, 0, 0.0, 0.0)
        decision = await self._run(lambda s: s.reserve(request))
        if self.degraded and self.fail_closed:
            return Decision(False, "unavailable", 1.0, 0.0, 0.0, 0, 0.0, 0.0)
        return decision

    async def settle(self, reservation_id: str, used: SettleUsage, now: float) -> Settlement | None:
        if await self.local.has_reservation(reservation_id):
            return await self.local.settle(reservation_id, used, now)
        return await self._run(lambda s: s.settle(reservation_id, used, now))

    async def has_reservation(self, reservation_id: str) -> bool:
        if await self.local.has_reservation(reservation_id):
            return True
        return await self._run(lambda s: s.has_reservation(reservation_id))

    async def usage(self, request: UsageRequest) -> Usage:
        return await self._run(lambda s: s.usage(request))

    async def put_signal(self, pool: str, replica: str, payload: dict[str, Any], ts: float) -> None:
        await self.local.put_signal(pool, replica, payload, ts)
        if not self.degraded:
            try:
                await self.primary.put_signal(pool, replica, payload, ts)
            except StorageUnavailable as exc:
                self._down(exc)

    async def signals(self, pool: str, since: float) -> list[dict[str, Any]]:
        return await self._run(lambda s: s.signals(pool, since))

    async def pools(self) -> list[str]:
        return await self._run(lambda s: s.pools())

    async def forget_pool(self, pool: str) -> None:
        await self.local.forget_pool(pool)
        await self._run(lambda s: s.forget_pool(pool))

    async def evict_idle(self, now: float, idle_s: float) -> int:
        local = await self.local.evict_idle(now, idle_s)  # the fallback's own tenants
        if self.degraded:
            return local
        try:
            return local + await self.primary.evict_idle(now, idle_s)
        except StorageUnavailable as exc:
            self._down(exc)
            return local

    async def record_recommendation(
        self, pool: str, ts: float, value: int, keep_s: float
    ) -> list[tuple[float, int]]:
        return await self._run(lambda s: s.record_recommendation(pool, ts, value, keep_s))

    async def put_policy(self, text: str) -> int:
        return await self._run(lambda s: s.put_policy(text))

    async def get_policy(self) -> tuple[int, str] | None:
        return await self._run(lambda s: s.get_policy())

    async def ping(self) -> None:
        await self.primary.ping()

    async def close(self) -> None:
        await self.primary.close()
        await self.local.close()
