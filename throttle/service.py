"""Admission decisions: price, reserve, settle, read usage. No HTTP here.

:class:`Throttle` turns an admission request into one atomic storage reservation (rate,
concurrency lease, budgets and fair share, see :mod:`infermeter.throttle.storage.base`) and a settle
into one atomic correction. The pool's pressure state (from :mod:`infermeter.throttle.signals`)
decides whether fair share is enforced.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from infermeter.throttle.algorithms import budgets
from infermeter.throttle.algorithms.fairshare import FairParams
from infermeter.throttle.decision_log import DecisionLog, Entry, TenantActivity
from infermeter.throttle.errors import RequestError, UnknownReservation
from infermeter.throttle.policy import Limits, Policy, Pool
from infermeter.throttle.pricing import Price, Pricer
from infermeter.throttle.storage.base import (
    Decision,
    ReserveRequest,
    SettleUsage,
    Storage,
    Terms,
    Usage,
    UsageRequest,
    make_terms,
)
from infermeter.throttle.storage.memory import MemoryStorage

STATUSES = ("ok", "error", "client_abort", "throttled", "cache_hit")
_STATUS_SET = frozenset(STATUSES)
MAX_TOKENS_LIMIT = 10_000_000
PLAN_CACHE_SIZE = 100_000
_ALLOWED = ("allow", "")
_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__


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
    terms: Terms  # limits and prices, what storage needs besides the request
    # policy constants read on every decision, copied out of the pydantic document once
    fair_share: bool
    lease_s: float
    settle_grace_s: float
    unit: str


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
        self._pressure = pressure  # None: never under pressure
        self._prefix = id_prefix if id_prefix is not None else os.urandom(6).hex()
        self._ids = itertools.count(1)
        self._decisions: Counter[tuple[str, str]] = Counter()  # refusals, unusual allows
        self._allowed = 0  # plain allows (reason ""), not yet in _decisions
        self.settles: Counter[str] = Counter()  # status -> n
        self._windows = budgets.WindowCache()
        self._span_start = self._span_end = 0.0
        self._span = self._roll_span(now())  # (day, month) windows of the last decision
        self._plans: dict[tuple[str, str, str, str | None], _Plan] = {}
        self.recorder: DecisionLog | None = DecisionLog()

    @property
    def decisions(self) -> Counter[tuple[str, str]]:
        """Admissions so far by (decision, reason), e.g. ``("allow", "")``, ``("deny", "rate")``."""
        counts = Counter(self._decisions)
        if self._allowed:
            counts[_ALLOWED] += self._allowed
        return counts

    def _roll_span(self, now: float) -> tuple[budgets.Window, budgets.Window]:
        """The (day, month) budget windows of ``now``, kept for the decisions that follow."""
        day, month = self._span = self._windows.get(now)
        self._span_start = day.end - day.length_s
        self._span_end = day.end
        return day, month

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
        price = self.pricer.price(model)
        plan = _Plan(
            policy,
            self.pricer.epoch,
            limits,
            pool_name,
            pool,
            price,
            FairParams(True, slack, max_lead, pool.active_window_s, pool.fair_retry_s),
            FairParams(False, slack, max_lead, pool.active_window_s, pool.fair_retry_s),
            make_terms(
                pool_name,
                limits.rate_per_s,
                limits.burst,
                limits.concurrency,
                limits.daily_budget,
                limits.monthly_budget,
                limits.weight,
                price.prompt,
                price.completion,
                policy.doc.cached_prompt_factor,
            ),
            bool(pool.fair_share),
            policy.doc.lease_s,
            policy.doc.settle_grace_s,
            policy.unit,
        )
        if len(self._plans) >= PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    async def admit(self, req: AdmitRequest) -> AdmitResult:
        """Price the request, reserve its cost; never raises for a refusal."""
        max_tokens = req.max_tokens
        if max_tokens < 0 or max_tokens > MAX_TOKENS_LIMIT:
            raise RequestError("max_tokens", f"must be between 0 and {MAX_TOKENS_LIMIT}")
        now = self._now()
        tenant = req.tenant
        key = (tenant, req.tier_hint, req.model, req.pool)
        plan = self._plans.get(key)
        if plan is None or plan.policy is not self.policy or plan.price_epoch != self.pricer.epoch:
            plan = self._plan(key)
        price = plan.price
        prompt_tokens = req.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = self.pricer.prompt_tokens(None, req.prompt_chars)
        cost = prompt_tokens * price.prompt + max_tokens * price.completion
        pool_name = plan.pool_name
        pressure_of = self._pressure
        pressure = plan.fair_share and pressure_of is not None and pressure_of(pool_name)
        lease_s = req.lease_s
        if lease_s is None:
            lease_s = plan.lease_s
        if not self._span_start <= now < self._span_end:
            self._roll_span(now)
        day, month = self._span
        rid = f"{self._prefix}-{next(self._ids):x}"
        lease_expires_at = now + lease_s
        record_expires_at = lease_expires_at + plan.settle_grace_s
        fair = plan.hot if pressure else plan.calm
        storage = self.storage
        if type(storage) is MemoryStorage:  # in process: no coroutine, no request object
            decision = storage.decide(
                rid,
                tenant,
                cost,
                now,
                lease_expires_at,
                record_expires_at,
                day.key,
                day.end,
                month.key,
                month.end,
                fair,
                plan.terms,
            )
        else:
            decision = await storage.reserve(
                _reserve_request(
                    rid,
                    tenant,
                    cost,
                    now,
                    lease_expires_at,
                    record_expires_at,
                    day,
                    month,
                    fair,
                    plan.terms,
                )
            )
        allowed = decision.allowed
        reason = decision.reason
        if allowed and not reason:
            self._allowed += 1  # the common case, folded into ``decisions`` when read
        else:
            key_ = ("allow" if allowed else "deny", reason)
            counts = self._decisions
            counts[key_] = counts.get(key_, 0) + 1
        recorder = self.recorder
        if recorder is not None:
            recorder.record(tenant, now, allowed, reason, cost)
        return _new(
            AdmitResult,
            (
                allowed,
                reason,
                decision.retry_after_s,
                rid if allowed else "",
                cost,
                lease_expires_at if allowed else 0.0,
                tenant,
                pool_name,
                plan.limits,
                decision,
                plan.unit,
                pressure,
            ),
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
        if prompt_tokens < 0 or cached_prompt_tokens < 0 or completion_tokens < 0:
            for name, value in (
                ("prompt_tokens", prompt_tokens),
                ("cached_prompt_tokens", cached_prompt_tokens),
                ("completion_tokens", completion_tokens),
            ):
                if value < 0:
                    raise RequestError(name, "must be >= 0")
        if status not in _STATUS_SET:
            raise RequestError("status", f"must be one of {', '.join(STATUSES)}")
        storage = self.storage
        if type(storage) is MemoryStorage:
            settled = storage.settle_now(
                reservation_id, prompt_tokens, cached_prompt_tokens, completion_tokens, self._now()
            )
        else:
            used = SettleUsage(prompt_tokens, cached_prompt_tokens, completion_tokens)
            settled = await storage.settle(reservation_id, used, self._now())
        if settled is None:
            raise UnknownReservation(reservation_id)
        duplicate = settled.duplicate
        label = "duplicate" if duplicate else status
        settles = self.settles
        settles[label] = settles.get(label, 0) + 1
        return _new(
            SettleResult,
            (
                reservation_id,
                settled.tenant,
                settled.estimate,
                settled.actual,
                settled.actual - settled.estimate,
                duplicate,
                self.policy.doc.unit,
            ),
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

    async def known_tenants(self, limit: int) -> tuple[list[KnownTenant], int]:
        """Tenants named by the policy or seen in recent decisions (sorted by name, at most
        ``limit``, each with its usage), and how many there are in all."""
        in_policy = set(self.policy.doc.tenants)
        seen = self.recorder.tenants() if self.recorder is not None else []
        names = sorted(in_policy.union(seen))
        out = []
        for name in names[:limit]:
            activity = self.recorder.activity(name) if self.recorder is not None else None
            out.append(KnownTenant(await self.usage(name), name in in_policy, activity))
        return out, len(names)

    def decisions_since(self, tenant: str, since: float) -> list[Entry]:
        """This replica's recent decisions for ``tenant`` with ``ts >= since``, oldest first."""
        return self.recorder.since(tenant, since) if self.recorder is not None else []


def _reserve_request(
    rid: str,
    tenant: str,
    cost: float,
    now: float,
    lease_expires_at: float,
    record_expires_at: float,
    day: budgets.Window,
    month: budgets.Window,
    fair: FairParams,
    terms: Terms,
) -> ReserveRequest:
    pool, rate, burst, concurrency, daily, monthly, weight, prompt, completion, cached = terms
    return ReserveRequest(
        rid,
        tenant,
        pool,
        cost,
        now,
        rate,
        burst,
        concurrency,
        lease_expires_at,
        record_expires_at,
        day.key,
        day.end,
        daily,
        month.key,
        month.end,
        monthly,
        weight,
        fair,
        prompt,
        completion,
        cached,
    )


@dataclass(frozen=True, slots=True)
class KnownTenant:
    """A tenant the throttle knows, from the policy and/or its recent decisions."""

    usage: TenantUsage
    in_policy: bool
    activity: TenantActivity | None


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` as whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds))) if math.isfinite(seconds) else "86400"
