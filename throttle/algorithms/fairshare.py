"""Weighted fair share in the spirit of the Virtual Token Counter (VTC).

Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024): one counter per
tenant holds the weighted service it has received; the waiting tenant with the smallest
counter is served first; a tenant that becomes active again is lifted to
``max(own, smallest counter among active tenants)`` so it cannot bank credit while idle.

As an *admission* rule (the throttle does not own the engine's queue) this becomes:

- every admission charges ``cost / weight`` to the tenant's counter in the pool, and settle
  replaces the estimate by the actual cost (VTC charges settled compute, not bytes);
- a tenant is *backlogged* while it holds a lease (work in flight) in the pool; the *floor*
  is the smallest counter among the other backlogged tenants (None when there are none);
- a tenant that was not backlogged is lifted to the floor when it asks, as VTC lifts a
  client whose queue becomes non-empty again: a light tenant never banks credit;
- under pressure only, a tenant whose counter leads the floor by more than ``slack`` is
  refused (reason ``fair_share``): the tenant with the least weighted service always passes,
  light tenants are not held back by a heavy one, and a tenant alone passes
  (work-conserving);
- a counter never leads the floor by more than ``max_lead``, so service received while the
  pool was idle is not held against a tenant forever;
- a tenant idle for ``FORGET_FACTOR`` x ``active_window_s`` (storage) is forgotten.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FairParams:
    """Fair-share settings of one pool at decision time."""

    pressure: bool  # the pool is saturated: enforce fair share
    slack: float  # allowed lead over the floor (cost units / weight)
    max_lead: float  # cap on any counter's lead (cost units / weight)
    active_window_s: float  # idle tenants are forgotten after 10 of these windows
    retry_s: float  # Retry-After for a fair-share refusal


def min_active(counters: Iterable[tuple[str, float]], tenant: str) -> float | None:
    """The smallest counter among the *other* tenants given, or None when alone."""
    best: float | None = None
    for name, value in counters:
        if name != tenant and (best is None or value < best):
            best = value
    return best


def lift(own: float, backlogged: bool, floor: float | None) -> float:
    """VTC re-activation: a tenant that was not backlogged rises to the active minimum."""
    if backlogged or floor is None:
        return own
    return max(own, floor)


def admits(own: float, floor: float | None, params: FairParams) -> bool:
    """Whether fair share lets this tenant in (always outside pressure or when alone)."""
    if not params.pressure or floor is None:
        return True
    return own - floor <= params.slack


def charge(own: float, cost: float, weight: float, floor: float | None, max_lead: float) -> float:
    """The counter after admitting ``cost``: weighted, and capped at ``floor + max_lead``."""
    value = own + cost / weight
    if floor is not None and max_lead > 0:
        value = min(value, max(own, floor + max_lead))
    return value
