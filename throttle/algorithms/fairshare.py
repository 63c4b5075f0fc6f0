"""Weighted fair share in the spirit of the Virtual Token Counter (VTC).

Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024): one counter per
tenant holds the weighted service it has received; the waiting tenant with the smallest
counter is served first; a tenant that becomes active again is lifted to
``max(own, smallest counter among active tenants)`` so it cannot bank credit while idle.

As an *admission* rule (the throttle does not own the engine's queue) this becomes:

- every admission charges ``cost / weight`` to the tenant's counter in the pool, and settle
  replaces the estimate by the actual cost (VTC charges settled compute, not bytes);
- a tenant is *active* while it has asked within ``active_window_s``; the smallest counter
  among the other active tenants is the *floor*;
- a tenant whose queue was empty (nothing in flight, or not active) is lifted to the floor
  when it asks, as VTC lifts a client whose queue becomes non-empty again: a light tenant
  never banks credit, and its counter never drifts behind or ahead of the others';
- under pressure only, a tenant whose counter leads the smallest active counter by more than
  ``slack`` is refused (reason ``fair_share``): the tenant with the least weighted service
  always passes, light tenants are never held back by a heavy one;
- a counter never leads the smallest active counter by more than ``max_lead``, so service
  received while the pool was idle is not held against a tenant forever (bounded memory,
  the pool stays work-conserving outside pressure).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FairParams:
    """Fair-share settings of one pool at decision time."""

    pressure: bool  # the pool is saturated: enforce fair share
    slack: float  # allowed lead over the smallest active counter (cost units / weight)
    max_lead: float  # cap on any counter's lead (cost units / weight)
    active_window_s: float  # a tenant is active while it asked within this window
    retry_s: float  # Retry-After for a fair-share refusal


def min_active(counters: Iterable[tuple[str, float]], tenant: str) -> float | None:
    """The smallest counter among the *other* active tenants, or None when alone."""
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
