"""Cost-weighted GCRA: a token bucket stored as one "theoretical arrival time" (TAT).

A tier grants ``rate`` cost units per second with a ``burst`` of cost units. The emission
interval of one cost unit is ``T = 1 / rate`` seconds and the burst tolerance is
``tau = burst * T`` seconds. A request of cost ``c`` moves the TAT to
``max(tat, now) + c * T``; it conforms when the new TAT is no more than ``tau`` ahead of now.

A request dearer than the whole burst could never conform; it is admitted when the bucket is
full (``tat <= now``) and leaves the bucket in debt, so a tenant with a small burst is not
locked out by one large prompt. Settling a reservation moves the TAT by the cost difference:
a refund gives the units back, an extra debit takes more (possibly into debt).
"""

from __future__ import annotations

import math
from typing import NamedTuple


class GcraResult(NamedTuple):
    """Outcome of one GCRA check."""

    allowed: bool
    tat: float  # the TAT to store when allowed (unchanged TAT when denied)
    retry_after_s: float  # 0 when allowed
    remaining: float  # cost units left in the bucket after this decision
    reset_s: float  # seconds until the bucket is full again


def emission_interval(rate_per_s: float) -> float:
    """Seconds per cost unit; infinite rate (0 = unlimited) gives 0."""
    return 0.0 if rate_per_s <= 0 or math.isinf(rate_per_s) else 1.0 / rate_per_s


def check(tat: float, now: float, cost: float, rate_per_s: float, burst: float) -> GcraResult:
    """Decide whether a request of ``cost`` units conforms; ``rate_per_s <= 0`` is unlimited."""
    if rate_per_s <= 0 or rate_per_s == math.inf:
        return GcraResult(True, tat, 0.0, math.inf, 0.0)
    t = 1.0 / rate_per_s
    tau = burst * t
    base = max(tat, now)
    new_tat = base + cost * t
    if new_tat - now <= tau or tat <= now:
        return GcraResult(
            True, new_tat, 0.0, max(0.0, (tau - (new_tat - now)) / t), max(0.0, new_tat - now)
        )
    retry = new_tat - now - tau
    return GcraResult(False, tat, retry, max(0.0, (tau - (base - now)) / t), max(0.0, base - now))


def adjust(tat: float, now: float, delta_cost: float, rate_per_s: float) -> float:
    """The TAT after settling: ``delta_cost`` > 0 debits more, < 0 refunds.

    The difference is applied to the bucket as it is at ``now``: a TAT in the past is a full
    bucket, the same as ``now`` (storage may have dropped it), so an extra debit is taken
    from ``max(tat, now)``. A refund never moves the TAT below ``now``: units cannot be
    banked beyond a full bucket.
    """
    t = emission_interval(rate_per_s)
    if t == 0.0:
        return tat
    moved = max(tat, now) + delta_cost * t
    return max(moved, now)


def state(tat: float, now: float, rate_per_s: float, burst: float) -> tuple[float, float]:
    """``(remaining units, seconds until full)`` without deciding anything."""
    t = emission_interval(rate_per_s)
    if t == 0.0:
        return math.inf, 0.0
    ahead = max(0.0, tat - now)
    return max(0.0, (burst * t - ahead) / t), ahead
