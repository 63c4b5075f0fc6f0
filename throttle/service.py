"""Admission decisions: price, reserve, settle, read usage. No HTTP here.

:class:`Throttle` turns an admission request into one atomic storage reservation (rate,
concurrency lease, budgets and fair share, see :mod:`infermeter.throttle.storage.base`) and a
settle into one atomic correction. The pool's pressure state (from
:mod:`infermeter.throttle.signals`) decides whether fair share is enforced. What the storage
can do is asked, never its class: a backend whose :class:`Capabilities` offer in-process
decisions is called synchronously (no coroutine, no request object), any other through the
:class:`Storage` protocol. The values taken and returned are in
:mod:`infermeter.throttle.admission`, the per-(tenant, model, pool) plans in
:mod:`infermeter.throttle.plans`.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Callable
from typing import cast

from infermeter.throttle.admission import (
    MAX_TOKENS_LIMIT,
    STATUSES,
    AdmitRequest,
    AdmitResult,
    KnownTenant,
    SettleResult,
    TenantUsage,
    retry_after_header,
)
from infermeter.throttle.algorithms import budgets
from infermeter.throttle.decision_log import DecisionLog, Entry
from infermeter.throttle.errors import RequestError, UnknownReservation
from infermeter.throttle.plans import Plan, make_plan, reserve_request
from infermeter.throttle.policy import Policy
from infermeter.throttle.pricing import Pricer
from infermeter.throttle.storage.base import (
    Capabilities,
    InProcessDecisions,
    SettleUsage,
    Storage,
    UsageRequest,
)

_STATUS_SET = frozenset(STATUSES)
PLAN_CACHE_SIZE = 100_000
_ALLOWED = ("allow", "")
_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__


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
        self._in_process: InProcessDecisions | None = None
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
        self._plans: dict[tuple[str, str, str, str | None], Plan] = {}
        self.recorder: DecisionLog | None = DecisionLog()
        self.tenants_evicted = 0  # tenant states forgotten after idle_s (see evict_idle)

    @property
    def storage(self) -> Storage:
        """The state backend; setting it reads its capabilities once (they are fixed)."""
        return self._storage

    @storage.setter
    def storage(self, storage: Storage) -> None:
        self._storage = storage
        capabilities: Capabilities = storage.capabilities
        # in process: decide and settle without a coroutine or a request object
        in_process = capabilities.in_process_decisions
        self._in_process = cast(InProcessDecisions, storage) if in_process else None

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

    def _plan(self, key: tuple[str, str, str, str | None]) -> Plan:
        """Everything about (tenant, tier, model, pool) that only changes with the policy."""
        plan = make_plan(self.policy, self.pricer, key)
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
        in_process = self._in_process
        if in_process is not None:  # no coroutine, no request object
            decision = in_process.decide(
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
            decision = await self._storage.reserve(
                reserve_request(
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
        in_process = self._in_process
        if in_process is not None:
            settled = in_process.settle_now(
                reservation_id, prompt_tokens, cached_prompt_tokens, completion_tokens, self._now()
            )
        else:
            used = SettleUsage(prompt_tokens, cached_prompt_tokens, completion_tokens)
            settled = await self._storage.settle(reservation_id, used, self._now())
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

    async def evict_idle(self, idle_s: float) -> int:
        """Forget the state of tenants idle for ``idle_s`` that can change no later decision
        (storage) and their entries in the decision log; returns how many tenant states."""
        now = self._now()
        gone = await self._storage.evict_idle(now, idle_s)
        if self.recorder is not None:
            self.recorder.evict_idle(now - idle_s)
        self.tenants_evicted += gone
        return gone

    def decisions_since(self, tenant: str, since: float) -> list[Entry]:
        """This replica's recent decisions for ``tenant`` with ``ts >= since``, oldest first."""
        return self.recorder.since(tenant, since) if self.recorder is not None else []


__all__ = [
    "MAX_TOKENS_LIMIT",
    "PLAN_CACHE_SIZE",
    "STATUSES",
    "AdmitRequest",
    "AdmitResult",
    "KnownTenant",
    "SettleResult",
    "TenantUsage",
    "Throttle",
    "retry_after_header",
]
