"""The values that cross the decision service: an admission and its answer, a settle's
outcome, a tenant's standing.

:class:`infermeter.throttle.service.Throttle` takes and returns these; the HTTP layers
(:mod:`infermeter.throttle.gateway_http`, :mod:`infermeter.throttle.api`) map them to and
from the wire. The answers built on every decision are named tuples (see
:mod:`infermeter.throttle.storage.base`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from infermeter.throttle.decision_log import TenantActivity
from infermeter.throttle.policy import Limits
from infermeter.throttle.storage.base import Decision, Usage

STATUSES = ("ok", "error", "client_abort", "throttled", "cache_hit")
MAX_TOKENS_LIMIT = 10_000_000


@dataclass(slots=True)  # not frozen: 4x cheaper to build, on the decision path
class AdmitRequest:
    """One question from a gateway: may ``tenant`` send this inference now?"""

    tenant: str
    model: str
    max_tokens: int
    prompt_tokens: int | None = None
    prompt_chars: int | None = None
    pool: str | None = None
    request_id: str | None = None
    tier_hint: str = ""
    lease_s: float | None = None


class AdmitResult(NamedTuple):
    """The answer, with what the HTTP layer needs for its headers."""

    allowed: bool
    reason: str
    retry_after_s: float
    reservation_id: str
    estimate: float
    lease_expires_at: float
    tenant: str
    pool: str
    limits: Limits
    decision: Decision
    unit: str
    pressure: bool


class SettleResult(NamedTuple):
    """The outcome of a settle."""

    reservation_id: str
    tenant: str
    estimate: float
    actual: float
    delta: float
    duplicate: bool
    unit: str


@dataclass(frozen=True, slots=True)
class TenantUsage:
    """A tenant's limits and where it stands against them."""

    tenant: str
    limits: Limits
    usage: Usage
    unit: str


@dataclass(frozen=True, slots=True)
class KnownTenant:
    """A tenant the throttle knows, from the policy and/or its recent decisions."""

    usage: TenantUsage
    in_policy: bool
    activity: TenantActivity | None


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` as whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds))) if math.isfinite(seconds) else "86400"
