"""Desired replicas per pool with the Kubernetes HPA rule.

For each configured signal, ``desired = ceil(current * observed / target)`` where
``observed`` is the per-replica average; when ``observed / target`` is within the tolerance
band around 1 the signal asks for ``current``. The largest desire wins (and is reported as
the driver), then ``min``/``max`` replicas apply, then stabilisation as the HPA does it:
the scale-up recommendation is the smallest desire seen within the scale-up window, the
scale-down recommendation the largest desire seen within the scale-down window, so a pool
grows within one evaluation of a sustained breach (window 0) and shrinks only after the
scale-down window of lower desires.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAX_REPLICAS = 100_000  # no desire exceeds it (a policy's max_replicas is at most this)


@dataclass(frozen=True, slots=True)
class SignalDesire:
    """What one signal asks for."""

    signal: str
    observed: float
    target: float
    ratio: float
    desired: int


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The stabilised answer for a pool."""

    current: int
    raw_desired: int  # before stabilisation (after min/max)
    desired: int
    driver: str  # the signal that set raw_desired ("min_replicas"/"max_replicas"/"none")
    desires: tuple[SignalDesire, ...]


def desire(
    signal: str, current: int, observed: float, target: float, tolerance: float
) -> SignalDesire:
    """HPA rule for one signal; ``current`` 0 is treated as 1 so demand can wake a pool.

    The desire is at most :data:`MAX_REPLICAS` and the ratio finite, however large the
    observed value."""
    base = max(current, 1)
    ratio = min(observed / target, sys.float_info.max) if target > 0 else 0.0
    scaled = base * ratio
    if abs(ratio - 1.0) <= tolerance:
        wanted = base
    elif scaled >= MAX_REPLICAS:
        wanted = MAX_REPLICAS
    else:
        wanted = math.ceil(scaled - 1e-9)
    return SignalDesire(signal, observed, target, ratio, max(wanted, 0))


def raw_recommendation(
    current: int,
    observed: Mapping[str, float],
    targets: Mapping[str, float],
    tolerance: float,
    min_replicas: int,
    max_replicas: int,
) -> tuple[int, str, tuple[SignalDesire, ...]]:
    """Largest desire over the signals that have data, clamped to ``[min, max]``."""
    desires = tuple(
        desire(name, current, observed[name], target, tolerance)
        for name, target in targets.items()
        if name in observed
    )
    if desires:
        top = max(desires, key=lambda d: d.desired)
        wanted, driver = top.desired, top.signal
    else:
        wanted, driver = current, "none"
    if wanted < min_replicas:
        return min_replicas, "min_replicas", desires
    if wanted > max_replicas:
        return max_replicas, "max_replicas", desires
    return wanted, driver, desires


def stabilise(
    current: int,
    history: Sequence[tuple[float, int]],
    now: float,
    up_window_s: float,
    down_window_s: float,
    history_since: float | None = None,
) -> int:
    """HPA behaviour: ``history`` holds ``(ts, raw desired)`` including the newest one.

    ``history_since`` is when the history started (e.g. the throttle's start): until it
    covers the whole scale-down window the current count counts as a recommendation, so a
    restarted throttle never scales a pool down before it has watched a full window.
    """
    up = [v for ts, v in history if ts >= now - up_window_s]
    down = [v for ts, v in history if ts >= now - down_window_s]
    if history_since is not None and history_since > now - down_window_s:
        down.append(current)
    up_limit = min(up) if up else current
    down_limit = max(down) if down else current
    if up_limit > current:
        return up_limit
    if down_limit < current:
        return down_limit
    return current
