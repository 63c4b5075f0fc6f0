"""What an admission needs to know that only changes with the policy or the prices.

A :class:`Plan` is everything about one (tenant, tier hint, model, pool hint) that the
decision path reads: the tenant's limits, the pool, the model's price, the fair-share
parameters under pressure and calm, and the storage :data:`Terms`. The service builds one
with :func:`make_plan` and keeps it until the policy or the price epoch changes;
:func:`reserve_request` spreads a plan's terms into the request object of the
:class:`Storage` protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from infermeter.throttle.algorithms import budgets
from infermeter.throttle.algorithms.fairshare import FairParams
from infermeter.throttle.policy import Limits, Policy, Pool
from infermeter.throttle.pricing import Price, Pricer
from infermeter.throttle.storage.base import ReserveRequest, Terms, make_terms


@dataclass(frozen=True, slots=True)
class Plan:
    """One (tenant, tier hint, model, pool hint) under one policy and price epoch."""

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


def make_plan(policy: Policy, pricer: Pricer, key: tuple[str, str, str, str | None]) -> Plan:
    """The plan of ``key`` = (tenant, tier hint, model, pool hint) under ``policy``."""
    tenant, tier_hint, model, pool_hint = key
    limits = policy.limits_for(tenant, tier_hint)
    pool_name = pool_hint or policy.pool_of(model)
    pool = policy.pool(pool_name)
    slack, max_lead = policy.fair_slack(pool, limits)
    price = pricer.price(model)
    return Plan(
        policy,
        pricer.epoch,
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


def reserve_request(
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
    """The :class:`ReserveRequest` of one admission (the coroutine path of the protocol)."""
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
