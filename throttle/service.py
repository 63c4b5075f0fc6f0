"""Admission decisions: price, reserve, settle, read usage. No HTTP here.

:class:`Throttle` turns an admission request into one atomic storage reservation (rate,
concurrency lease, budgets and fair share, see :mod:`throttle.storage.base`) and a settle
into one atomic correction. The pool's pressure state (from :mod:`throttle.signals`) decides
whether fair share is enforced.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from throttle.algorithms import budgets
from throttle.algorithms.fairshare import FairParams
from throttle.errors import RequestError, UnknownReservation
from throttle.policy import Limits, Policy, Pool
from throttle.pricing import Price, Pricer
from throttle.storage.base import (
    Decision,
    ReserveRequest,
    SettleUsage,
    Storage,
    Usage,
    UsageRequest,
)

STATUSES = ("ok", "error", "client_abort", "throttled", "cache_hit")
MAX_TOKENS_LIMIT = 10_000_000
PLAN_CACHE_SIZE = 100_000


@dataclass(frozen=True, slots=True)
class _Plan:
    policy: Policy
    price_epoch: int
    limits: Limits
    pool_name: str
    pool: Pool
    price: Price
    hot: FairParams
    calm: FairParams


@dataclass(frozen=True, slots=True)
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


@dataclass(slots=True)
class AdmitResult:
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


@dataclass(frozen=True, slots=True)
class SettleResult:
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


class Throttle:
    """The decision service; ``pressure(pool)`` says whether a pool is saturated."""

    def __init__(
        self,
        policy: Policy,
        storage: Storage,
        now: Callable[[], float],
        pressure: Callable[[str], bool] | None = None,
        id_prefix: str | None = None,
    ) -> None:
        self.policy = policy
        self.pricer = Pricer(policy)
        self.storage = storage
        self._now = now
        self._pressure = pressure or (lambda _pool: False)
        self._prefix = id_prefix if id_prefix is not None else os.urandom(6).hex()
        self._ids = itertools.count(1)
        self.decisions: Counter[tuple[str, str]] = Counter()  # (decision, reason) -> n
        self.settles: Counter[str] = Counter()  # status -> n
        self._windows = budgets.WindowCache()
        self._plans: dict[tuple[str, str, str, str | None], _Plan] = {}

    def set_policy(self, policy: Policy) -> None:
        """Swap the policy in force (atomic for every later decision)."""
        self.policy = policy
        self.pricer.set_policy(policy)

    def set_pressure(self, pressure: Callable[[str], bool]) -> None:
        self._pressure = pressure

    def _plan(self, key: tuple[str, str, str, str | None]) -> _Plan:
        """Everything about (tenant, tier, model, pool) that only changes with the policy."""
        tenant, tier_hint, model, pool_hint = key
        policy = self.policy
        limits = policy.limits_for(tenant, tier_hint)
        pool_name = pool_hint or policy.pool_of(model)
        pool = policy.pool(pool_name)
        slack, max_lead = policy.fair_slack(pool, limits)
        plan = _Plan(
            policy,
            self.pricer.epoch,
            limits,
            pool_name,
            pool,
            self.pricer.price(model),
            FairParams(True, slack, max_lead, pool.active_window_s, pool.fair_retry_s),
            FairParams(False, slack, max_lead, pool.active_window_s, pool.fair_retry_s),
        )
        if len(self._plans) >= PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _reservation_id(self) -> str:
        return f"{self._prefix}-{next(self._ids):x}"

    async def admit(self, req: AdmitRequest) -> AdmitResult:
        """Price the request, reserve its cost; never raises for a refusal."""
        if req.max_tokens < 0 or req.max_tokens > MAX_TOKENS_LIMIT:
            raise RequestError("max_tokens", f"must be between 0 and {MAX_TOKENS_LIMIT}")
        policy = self.policy
        now = self._now()
        key = (req.tenant, req.tier_hint, req.model, req.pool)
        plan = self._plans.get(key)
        if plan is None or plan.policy is not policy or plan.price_epoch != self.pricer.epoch:
            plan = self._plan(key)
        limits, pool, pool_name, price = plan.limits, plan.pool, plan.pool_name, plan.price
        prompt_tokens = req.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = self.pricer.prompt_tokens(None, req.prompt_chars)
        cost = prompt_tokens * price.prompt + req.max_tokens * price.completion
        pressure = pool.fair_share and self._pressure(pool_name)
        fair = plan.hot if pressure else plan.calm
        lease_s = req.lease_s if req.lease_s is not None else policy.doc.lease_s
        day, month = self._windows.get(now)
        rid = self._reservation_id()
        lease_expires_at = now + lease_s
        record_expires_at = lease_expires_at + policy.doc.settle_grace_s
        decision = await self.storage.reserve(
            ReserveRequest(
                rid,
                req.tenant,
                pool_name,
                cost,
                now,
                limits.rate_per_s,
                limits.burst,
                limits.concurrency,
                lease_expires_at,
                record_expires_at,
                day.key,
                day.end,
                limits.daily_budget,
                month.key,
                month.end,
                limits.monthly_budget,
                limits.weight,
                fair,
                price.prompt,
                price.completion,
                policy.doc.cached_prompt_factor,
            )
        )
        allowed = decision.allowed
        key_ = ("allow" if allowed else "deny", decision.reason)
        self.decisions[key_] = self.decisions.get(key_, 0) + 1
        return AdmitResult(
            allowed,
            decision.reason,
            decision.retry_after_s,
            rid if allowed else "",
            cost,
            lease_expires_at if allowed else 0.0,
            req.tenant,
            pool_name,
            limits,
            decision,
            policy.unit,
            pressure,
        )

    async def settle(
        self,
        reservation_id: str,
        prompt_tokens: int,
        cached_prompt_tokens: int = 0,
        completion_tokens: int = 0,
        status: str = "ok",
    ) -> SettleResult:
        """Replace the reservation's estimate by the cost of the actual usage."""
        for name, value in (
            ("prompt_tokens", prompt_tokens),
            ("cached_prompt_tokens", cached_prompt_tokens),
            ("completion_tokens", completion_tokens),
        ):
            if value < 0:
                raise RequestError(name, "must be >= 0")
        if status not in STATUSES:
            raise RequestError("status", f"must be one of {', '.join(STATUSES)}")
        used = SettleUsage(prompt_tokens, cached_prompt_tokens, completion_tokens)
        settled = await self.storage.settle(reservation_id, used, self._now())
        if settled is None:
            raise UnknownReservation(reservation_id)
        self.settles[status if not settled.duplicate else "duplicate"] += 1
        return SettleResult(
            reservation_id,
            settled.tenant,
            settled.estimate,
            settled.actual,
            settled.delta,
            settled.duplicate,
            self.policy.unit,
        )

    async def usage(self, tenant: str, tier_hint: str = "") -> TenantUsage:
        """Limits and current standing of ``tenant`` (budgets, bucket, in-flight, fair share)."""
        policy = self.policy
        now = self._now()
        limits = policy.limits_for(tenant, tier_hint)
        pools = tuple(sorted({*policy.doc.pools, "default"}))
        state = await self.storage.usage(
            UsageRequest(
                tenant,
                now,
                limits.rate_per_s,
                limits.burst,
                self._windows.get(now)[0].key,
                self._windows.get(now)[1].key,
                pools,
            )
        )
        return TenantUsage(tenant, limits, state, policy.unit)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` as whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds))) if math.isfinite(seconds) else "86400"
