"""IETF ``RateLimit-Policy`` / ``RateLimit`` fields and ``Retry-After``.

Syntax of draft-ietf-httpapi-ratelimit-headers-11 (Structured Field lists of items, each a
policy name with parameters)::

    RateLimit-Policy: "burst";q=20000;w=20;infermeter-unit="micro-usd",
                      "concurrency";q=4;qu="concurrent-requests"
    RateLimit: "burst";r=12000;t=8, "concurrency";r=3

``q`` (quota) and ``r`` (remaining) must be integers and the registered quota units are
requests, content-bytes and concurrent-requests only, so cost quotas are given in millionths
of the policy unit with the vendor parameter ``infermeter-unit`` ("micro-usd",
"micro-gpu_s"). Policies: ``burst`` (the GCRA bucket; ``w`` is the time to refill it),
``daily`` / ``monthly`` budgets, ``concurrency``. Unlimited policies are omitted. On a
refusal the policy that refused comes first.
"""

from __future__ import annotations

import math

from infermeter.throttle.policy import Limits
from infermeter.throttle.storage.base import Decision

SCALE = 1_000_000
MONTH_S = 30 * 86400


def _units(value: float) -> int:
    return max(0, math.floor(value * SCALE + 1e-6)) if math.isfinite(value) else 0


def _secs(value: float) -> int:
    return max(0, math.ceil(value - 1e-9)) if math.isfinite(value) else 0


def policy_items(limits: Limits, unit: str) -> list[tuple[str, str]]:
    """``(name, item)`` pairs of the RateLimit-Policy field for these limits."""
    tag = f'infermeter-unit="micro-{unit}"'
    items: list[tuple[str, str]] = []
    if limits.rate_per_s > 0:
        window = _secs(limits.burst / limits.rate_per_s) or 1
        items.append(("burst", f'"burst";q={_units(limits.burst)};w={window};{tag}'))
    if limits.daily_budget > 0:
        items.append(("daily", f'"daily";q={_units(limits.daily_budget)};w=86400;{tag}'))
    if limits.monthly_budget > 0:
        items.append(("monthly", f'"monthly";q={_units(limits.monthly_budget)};w={MONTH_S};{tag}'))
    if limits.concurrency > 0:
        items.append(
            ("concurrency", f'"concurrency";q={limits.concurrency};qu="concurrent-requests"')
        )
    return items


def state_items(
    limits: Limits, decision: Decision, day_reset_s: float, month_reset_s: float
) -> list[tuple[str, str]]:
    """``(name, item)`` pairs of the RateLimit field (remaining quota and reset)."""
    items: list[tuple[str, str]] = []
    if limits.rate_per_s > 0:
        r, t = _units(decision.remaining), _secs(decision.reset_s)
        if decision.reason == "rate":
            r, t = 0, _secs(decision.retry_after_s)
        items.append(("burst", f'"burst";r={r};t={t}'))
    if limits.daily_budget > 0:
        left = _units(limits.daily_budget - decision.day_spent)
        items.append(("daily", f'"daily";r={left};t={_secs(day_reset_s)}'))
    if limits.monthly_budget > 0:
        left = _units(limits.monthly_budget - decision.month_spent)
        items.append(("monthly", f'"monthly";r={left};t={_secs(month_reset_s)}'))
    if limits.concurrency > 0:
        free = max(0, limits.concurrency - decision.in_flight)
        items.append(("concurrency", f'"concurrency";r={free}'))
    return items


def _first(items: list[tuple[str, str]], name: str) -> str:
    if name and any(item[0] == name for item in items):
        items = sorted(items, key=lambda item: item[0] != name)
    return ", ".join([item for _, item in items])


# (id(limits), unit, refused_by) -> (limits, RateLimit-Policy value): the field depends only
# on the limits, so it is built once per limits object (held, so its id is not reused)
_policy_fields: dict[tuple[int, str, str], tuple[Limits, str]] = {}
POLICY_FIELD_CACHE = 4096


def _policy_field(limits: Limits, unit: str, refused_by: str) -> str:
    key = (id(limits), unit, refused_by)
    hit = _policy_fields.get(key)
    if hit is not None and hit[0] is limits:
        return hit[1]
    policies = policy_items(limits, unit)
    value = _first(policies, refused_by) if policies else ""
    if len(_policy_fields) >= POLICY_FIELD_CACHE:
        _policy_fields.clear()
    _policy_fields[key] = (limits, value)
    return value


def rate_limit_headers(
    limits: Limits,
    unit: str,
    decision: Decision,
    day_reset_s: float,
    month_reset_s: float,
) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` (and ``Retry-After`` on a refusal)."""
    reason = decision.reason
    refused_by = (decision.detail or "daily") if reason == "budget" else reason
    headers: dict[str, str] = {}
    policy = _policy_field(limits, unit, refused_by)
    if policy:
        headers["RateLimit-Policy"] = policy
        headers["RateLimit"] = _first(
            state_items(limits, decision, day_reset_s, month_reset_s), refused_by
        )
    if not decision.allowed:
        retry = decision.retry_after_s
        headers["Retry-After"] = str(max(1, math.ceil(retry))) if math.isfinite(retry) else "86400"
    return headers
