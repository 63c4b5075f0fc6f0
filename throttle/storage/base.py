"""The storage protocol every backend implements, and the values that cross it.

A backend holds state and performs each decision as one atomic operation: ``reserve``
(rate, concurrency lease, budgets and fair share checked and charged together), ``settle``
(estimate replaced by the actual cost everywhere it was charged), ``usage`` (a read).
The arithmetic is that of :mod:`infermeter.throttle.algorithms`; the backend only makes it atomic.
The values built on every decision (``Decision``, ``SettleUsage``, ``Settlement``) are named
tuples: in CPython a tuple is built in a third of the time of a slots dataclass.

A caller never asks which class a backend is: it reads the backend's
:class:`Capabilities` (``storage.capabilities``) and picks its path from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from infermeter.throttle.algorithms.fairshare import FairParams


@dataclass(slots=True)
class ReserveRequest:
    """Everything one admission needs; times are epoch seconds from the injected clock."""

    reservation_id: str
    tenant: str
    pool: str
    cost: float
    now: float
    rate_per_s: float
    burst: float
    concurrency: int
    lease_expires_at: float
    record_expires_at: float
    day_key: str
    day_end: float
    daily_budget: float
    month_key: str
    month_end: float
    monthly_budget: float
    weight: float
    fair: FairParams
    prompt_price: float = 0.0  # cost units per token, locked in for settle
    completion_price: float = 0.0
    cached_factor: float = 1.0


# The constant part of a reservation: a tenant's limits and prices in one pool, fixed for a
# policy and a price list, so a caller builds it once per (tenant, model, pool) and the
# memory backend's fast path takes it whole (``MemoryStorage.decide``): (pool, rate_per_s,
# burst, concurrency, daily_budget, monthly_budget, weight, prompt_price, completion_price,
# cached_factor). A plain tuple, not a NamedTuple: the garbage collector stops tracking an
# exact tuple of strings and numbers, and with it every reservation record that holds it.
Terms = tuple[str, float, float, int, float, float, float, float, float, float]


def make_terms(
    pool: str,
    rate_per_s: float,
    burst: float,
    concurrency: int,
    daily_budget: float,
    monthly_budget: float,
    weight: float,
    prompt_price: float = 0.0,
    completion_price: float = 0.0,
    cached_factor: float = 1.0,
) -> Terms:
    """A :data:`Terms` tuple, named arguments in its field order."""
    return (
        pool,
        rate_per_s,
        burst,
        concurrency,
        daily_budget,
        monthly_budget,
        weight,
        prompt_price,
        completion_price,
        cached_factor,
    )


class Decision(NamedTuple):
    """What a backend answers to a reservation."""

    allowed: bool
    reason: str  # "" | rate | concurrency | budget | fair_share
    retry_after_s: float
    remaining: float  # cost units left in the burst bucket
    reset_s: float  # seconds until the bucket is full
    in_flight: int
    day_spent: float
    month_spent: float
    fair_counter: float = 0.0
    fair_floor: float | None = None
    detail: str = ""  # e.g. daily | monthly for a budget refusal


class SettleUsage(NamedTuple):
    """The actual usage of a finished request."""

    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int


class Settlement(NamedTuple):
    """The outcome of settling a reservation."""

    reservation_id: str
    tenant: str
    pool: str
    estimate: float
    actual: float
    duplicate: bool = False  # this reservation was already settled; nothing changed

    @property
    def delta(self) -> float:
        return self.actual - self.estimate


@dataclass(frozen=True, slots=True)
class UsageRequest:
    """A read of a tenant's state."""

    tenant: str
    now: float
    rate_per_s: float
    burst: float
    day_key: str
    month_key: str
    pools: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """A tenant's current state."""

    remaining: float
    reset_s: float
    in_flight: int
    day_spent: float
    month_spent: float
    fair_counters: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do and how it is doing, asked instead of its class.

    ``in_process_decisions`` and ``shared_state`` are fixed for the life of a backend (a
    caller may read them once); ``degraded`` is the state of the moment.
    """

    # the synchronous path (:class:`InProcessDecisions`: ``decide`` / ``settle_now``) is
    # offered, each call atomic in this process without awaiting: only the in-memory backend
    in_process_decisions: bool
    # the state is shared by every replica holding a handle on it (and can be unreachable)
    shared_state: bool
    # decisions are served from a local fallback: the shared state is unreachable
    degraded: bool = False


class Storage(Protocol):
    """State backend: in-process memory or Redis (see
    :func:`infermeter.throttle.storage.from_uri`)."""

    name: str

    @property
    def capabilities(self) -> Capabilities: ...

    async def reserve(self, request: ReserveRequest) -> Decision: ...

    async def settle(self, reservation_id: str, used: SettleUsage, now: float) -> Settlement | None:
        """Price ``used`` at the reservation's locked-in prices and replace the estimate.

        None when the reservation is unknown (never made, or its record expired).
        """
        ...

    async def has_reservation(self, reservation_id: str) -> bool: ...

    async def usage(self, request: UsageRequest) -> Usage: ...

    async def put_signal(self, pool: str, replica: str, payload: dict[str, Any], ts: float) -> None:
        """Keep the latest engine signals of one replica."""
        ...

    async def signals(self, pool: str, since: float) -> list[dict[str, Any]]:
        """Latest signals of every replica of ``pool`` pushed at or after ``since``."""
        ...

    async def pools(self) -> list[str]:
        """Pools that have signals."""
        ...

    async def forget_pool(self, pool: str) -> None:
        """Drop a pool's signals and recommendation history (it went idle)."""
        ...

    async def evict_idle(self, now: float, idle_s: float) -> int:
        """Forget tenants idle for ``idle_s`` whose state can no longer change a decision;
        returns how many (a backend whose keys expire by themselves answers 0)."""
        ...

    async def record_recommendation(
        self, pool: str, ts: float, value: int, keep_s: float
    ) -> list[tuple[float, int]]:
        """Append a raw replica recommendation and return those within ``keep_s``."""
        ...

    async def put_policy(self, text: str) -> int:
        """Store a policy document for every throttle replica; returns its new version."""
        ...

    async def get_policy(self) -> tuple[int, str] | None: ...

    async def ping(self) -> None:
        """Raise :class:`infermeter.throttle.errors.StorageUnavailable` when unreachable."""
        ...

    async def close(self) -> None: ...


class InProcessDecisions(Storage, Protocol):
    """A backend whose :attr:`Capabilities.in_process_decisions` is true: ``reserve`` and
    ``settle`` without the coroutine and the request objects (the in-process fast path)."""

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
        """:meth:`Storage.reserve` with the fields of :class:`ReserveRequest` as arguments,
        the constant ones as one :data:`Terms` tuple."""
        ...

    def settle_now(
        self,
        reservation_id: str,
        prompt_tokens: int,
        cached_prompt_tokens: int,
        completion_tokens: int,
        now: float,
    ) -> Settlement | None:
        """:meth:`Storage.settle` without the coroutine and the usage object."""
        ...
