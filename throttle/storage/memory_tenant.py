"""One tenant's in-process state: GCRA bucket, leases held, budget window counters.

:class:`TenantState` is the one object a decision of the memory backend looks up per
tenant; its budget counters live in ``windows`` (window key -> ``[spent, kept until]``)
and a window's counter is dropped when read after it ended (:func:`window_spent`) or when a
new window begins (:func:`add_spend`).
"""

from __future__ import annotations

import math

from infermeter.throttle.storage.base import Terms

WINDOW_GRACE_S = 3600.0  # budget counters outlive their window by this much (late settles)

# tenant, estimate, record expiry, day key, month key, terms (pool, prices, ...)
Record = tuple[str, float, float, str, str, Terms]


class TenantState:
    """One tenant's bucket, leases and budget counters (every pool), and what eviction
    reads: when it last asked (``last``) and whether a budget ever applied to it."""

    __slots__ = ("budgeted", "held", "last", "tat", "windows")

    def __init__(self) -> None:
        # GCRA theoretical arrival time; any value <= now is a full bucket, like none stored
        self.tat = -math.inf
        self.held: dict[str, float] = {}  # reservation id -> lease expiry
        self.windows: dict[str, list[float]] = {}  # window key -> [spent, kept until]
        self.last = -math.inf  # time of its last admission request
        self.budgeted = False  # a daily or monthly budget applied to one of its requests

    def idle(self, now: float, before: float) -> bool:
        """Whether forgetting this state now changes no later decision: nothing asked since
        ``before``, no lease held, a full bucket, and no live spend that a budget counts."""
        if self.last >= before or self.held or self.tat > now:
            return False
        if not self.budgeted:
            return True  # spend without a budget is only reported (metering owns it)
        return not any(until > now and spent > 0 for spent, until in self.windows.values())


def window_spent(windows: dict[str, list[float]], key: str, now: float) -> float:
    """The amount spent in window ``key``; 0 (and the counter dropped) once it ended."""
    entry = windows.get(key)
    if entry is None:
        return 0.0
    if entry[1] <= now:
        del windows[key]
        return 0.0
    return entry[0]


def add_spend(
    windows: dict[str, list[float]], key: str, amount: float, expires: float, now: float
) -> float:
    """Add ``amount`` to window ``key`` (kept until at least ``expires``); the new total."""
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
