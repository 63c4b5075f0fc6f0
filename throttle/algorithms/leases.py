"""Concurrency slots as leases that expire.

A tenant holds one lease per admitted, unsettled request; a lease carries its expiry time.
Expired leases are dropped before counting, so a gateway that crashed before settling frees
its slots after at most the lease duration. The cost reserved with an expired lease stays
charged: the reservation settles at its estimate.
"""

from __future__ import annotations

from collections.abc import MutableMapping


def purge(leases: MutableMapping[str, float], now: float) -> list[str]:
    """Drop leases whose expiry is at or before ``now``; returns their ids."""
    expired = [rid for rid, expires in leases.items() if expires <= now]
    for rid in expired:
        del leases[rid]
    return expired


def has_slot(in_flight: int, cap: int) -> bool:
    """Whether one more lease fits under ``cap`` (``cap <= 0`` means unlimited)."""
    return cap <= 0 or in_flight < cap


def retry_after(leases: MutableMapping[str, float], now: float) -> float:
    """Seconds until the earliest lease expires (the latest moment a slot frees by itself)."""
    if not leases:
        return 0.0
    return max(0.0, min(leases.values()) - now)
