"""The throttle policy: tiers, tenants, model prices and pools, read from TOML.

A policy document (see ``docs/throttle.md`` and ``throttle/policy.example.toml``)::

    unit = "usd"                       # cost unit of every rate, burst and budget: usd | gpu_s
    default_tier = "free"
    [tiers.free]
    rate = 0.06                        # sustained cost units per `per_s` seconds
    per_s = 60
    burst = 0.02                       # cost units that may be spent at once
    concurrency = 4                    # in-flight requests (0 = unlimited)
    daily_budget = 1.0                 # 0 = unlimited
    monthly_budget = 20.0
    weight = 1.0                       # fair-share weight
    [tenants.acme]
    tier = "pro"
    concurrency = 64                   # any tier field overrides the tier for this tenant
    [models."meta-llama/Llama-3.1-8B-Instruct"]
    prompt = 1.0e-7                    # fallback cost units per prompt / completion token
    completion = 4.0e-7
    pool = "llama-8b"
    [pools.llama-8b]
    queue_per_replica = 5              # pressure when the mean waiting queue reaches this
    [pools.llama-8b.autoscale]
    targets = { num_requests_waiting = 5, kv_cache_usage_perc = 0.8 }

Invalid documents raise :class:`PolicyError` naming the dotted field at fault.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from infermeter.kernel.engine_signals import SIGNAL_NAMES
from infermeter.kernel.errors import CatalogError
from infermeter.kernel.price_catalog import load_catalog
from infermeter.throttle.algorithms import autoscale
from infermeter.throttle.errors import PolicyError

DEFAULT_MODEL = "*"
MAX_CONCURRENCY = 1_000_000  # leases per tenant (0 = unlimited)
MAX_CHECK_TOKENS = 10_000_000  # as an admission's max_tokens


class _Strict(BaseModel):
    # numbers are finite (0 means unlimited) and every answer that shows them is JSON
    model_config = {"extra": "forbid", "allow_inf_nan": False}


class Tier(_Strict):
    """Limits of a tier; every value is in the policy's cost unit."""

    rate: float = Field(default=0.0, ge=0)  # per `per_s` seconds; 0 = unlimited
    per_s: float = Field(default=60.0, gt=0)
    burst: float = Field(default=0.0, ge=0)  # 0 = one `rate` worth
    concurrency: int = Field(default=0, ge=0, le=MAX_CONCURRENCY)
    daily_budget: float = Field(default=0.0, ge=0)
    monthly_budget: float = Field(default=0.0, ge=0)
    weight: float = Field(default=1.0, gt=0)


class TenantEntry(_Strict):
    """A tenant's tier and its per-tenant overrides (any tier field)."""

    tier: str = ""
    rate: float | None = Field(default=None, ge=0)
    per_s: float | None = Field(default=None, gt=0)
    burst: float | None = Field(default=None, ge=0)
    concurrency: int | None = Field(default=None, ge=0, le=MAX_CONCURRENCY)
    daily_budget: float | None = Field(default=None, ge=0)
    monthly_budget: float | None = Field(default=None, ge=0)
    weight: float | None = Field(default=None, gt=0)


class ModelRate(_Strict):
    """Fallback price of a model, and the pool that serves it.

    Either explicit cost units per token (``prompt``, ``completion``), or the GPU it runs on
    (a price-catalog key) with its throughput: the price is then the catalog's GPU-second
    (times the overhead multiplier) divided by tokens per GPU-second.
    """

    prompt: float = Field(default=0.0, ge=0)
    completion: float = Field(default=0.0, ge=0)
    pool: str = ""
    gpu: str = ""  # price-catalog GPU key or alias, e.g. "h100-sxm"
    mig_profile: str = ""
    pricing: Literal["on_demand", "reserved", "spot"] = "on_demand"
    prompt_tokens_per_gpu_s: float = Field(default=0.0, ge=0)
    completion_tokens_per_gpu_s: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _throughput(self) -> ModelRate:
        if self.gpu and not (
            self.prompt_tokens_per_gpu_s > 0 and self.completion_tokens_per_gpu_s > 0
        ):
            raise ValueError(
                "a model priced from the catalog (gpu) needs prompt_tokens_per_gpu_s and "
                "completion_tokens_per_gpu_s > 0"
            )
        return self


class Autoscale(_Strict):
    """HPA-style replica recommendation for a pool."""

    min_replicas: int = Field(default=1, ge=0, le=autoscale.MAX_REPLICAS)
    max_replicas: int = Field(default=10, ge=1, le=autoscale.MAX_REPLICAS)
    tolerance: float = Field(default=0.1, ge=0, lt=1)
    scale_up_window_s: float = Field(default=0.0, ge=0)
    scale_down_window_s: float = Field(default=300.0, ge=0)
    targets: dict[str, float] = Field(
        default_factory=lambda: {"num_requests_waiting": 5.0, "kv_cache_usage_perc": 0.8}
    )

    @model_validator(mode="after")
    def _check(self) -> Autoscale:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        for name, target in self.targets.items():
            if name not in SIGNAL_NAMES:
                raise ValueError(f"unknown signal {name!r} in targets (known: {SIGNAL_NAMES})")
            if not target > 0:
                raise ValueError(f"target of {name} must be > 0")
        return self


class Pool(_Strict):
    """Pressure detection and fair-share settings of one model pool."""

    queue_per_replica: float = Field(default=5.0, gt=0)
    kv_cache_usage: float = Field(default=0.8, gt=0, le=1)
    ttft_p95_slo_s: float = Field(default=0.0, ge=0)  # 0 = no TTFT condition
    queue_growth_window_s: float = Field(default=30.0, gt=0)
    pressure_hold_s: float = Field(default=10.0, ge=0)
    stale_after_s: float = Field(default=30.0, gt=0)
    fair_share: bool = True
    fair_slack: float | None = Field(default=None, ge=0)  # default: the tenant's burst / weight
    fair_max_lead: float | None = Field(default=None, ge=0)  # default: 2 x slack
    active_window_s: float = Field(default=30.0, gt=0)  # idle 10 windows: forgotten
    fair_retry_s: float = Field(default=1.0, gt=0)
    autoscale: Autoscale = Field(default_factory=lambda: Autoscale.model_validate({}))


class PolicyDocument(_Strict):
    """The whole policy file."""

    unit: Literal["usd", "gpu_s"] = "usd"
    catalog: str = ""  # price catalog override file (metering's format); empty: shipped
    default_tier: str = "default"
    lease_s: float = Field(default=120.0, gt=0)
    check_lease_s: float = Field(default=30.0, gt=0)
    settle_grace_s: float = Field(default=3600.0, ge=0)
    chars_per_token: float = Field(default=4.0, gt=0)
    check_max_tokens: int = Field(default=256, ge=0, le=MAX_CHECK_TOKENS)
    cached_prompt_factor: float = Field(default=0.1, ge=0, le=1)
    tiers: dict[str, Tier] = Field(default_factory=lambda: {"default": Tier.model_validate({})})
    tenants: dict[str, TenantEntry] = Field(default_factory=dict)
    models: dict[str, ModelRate] = Field(default_factory=dict)
    pools: dict[str, Pool] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Limits:
    """A tenant's effective limits (tier with overrides), rates per second."""

    tier: str
    rate_per_s: float  # 0 = unlimited
    burst: float
    concurrency: int
    daily_budget: float
    monthly_budget: float
    weight: float
    per_s: float


def _check_references(doc: PolicyDocument) -> None:
    if doc.default_tier not in doc.tiers:
        raise PolicyError("default_tier", f"{doc.default_tier!r} is not a declared tier")
    for name, entry in doc.tenants.items():
        if entry.tier and entry.tier not in doc.tiers:
            raise PolicyError(f"tenants.{name}.tier", f"unknown tier {entry.tier!r}")


class Policy:
    """A validated policy with fast per-tenant limit resolution."""

    def __init__(self, doc: PolicyDocument, version: int = 0, source: str = "") -> None:
        _check_references(doc)
        self.doc = doc
        self.version = version
        self.source = source
        self._limits: dict[tuple[str, str], Limits] = {}
        self._default_pool = Pool.model_validate({})
        self.catalog_rates = _catalog_rates(doc)

    @property
    def unit(self) -> str:
        return self.doc.unit

    def limits_for(self, tenant: str, tier_hint: str = "") -> Limits:
        """Effective limits: the tenant's entry, else the tier of its API key, else default."""
        cache_key = (tenant, tier_hint)
        found = self._limits.get(cache_key)
        if found is not None:
            return found
        entry = self.doc.tenants.get(tenant)
        tier_name = (entry.tier if entry else "") or tier_hint
        if tier_name not in self.doc.tiers:
            tier_name = self.doc.default_tier
        values: dict[str, Any] = self.doc.tiers[tier_name].model_dump()
        if entry is not None:
            values.update(
                {k: v for k, v in entry.model_dump(exclude={"tier"}).items() if v is not None}
            )
        rate_per_s = values["rate"] / values["per_s"]
        burst = values["burst"] or values["rate"]
        limits = Limits(
            tier=tier_name,
            rate_per_s=rate_per_s,
            burst=burst,
            concurrency=values["concurrency"],
            daily_budget=values["daily_budget"],
            monthly_budget=values["monthly_budget"],
            weight=values["weight"],
            per_s=values["per_s"],
        )
        if len(self._limits) < 100_000:
            self._limits[cache_key] = limits
        return limits

    def pool_of(self, model: str) -> str:
        """The pool serving ``model`` (``default`` when the policy does not say)."""
        rate = self.doc.models.get(model) or self.doc.models.get(DEFAULT_MODEL)
        return (rate.pool if rate else "") or "default"

    def pool(self, name: str) -> Pool:
        """Settings of a pool (defaults for an undeclared one)."""
        return self.doc.pools.get(name, self._default_pool)

    def fallback_rate(self, model: str) -> ModelRate | None:
        """The policy's own price for ``model`` (or for ``*``)."""
        return self.doc.models.get(model) or self.doc.models.get(DEFAULT_MODEL)

    def fair_slack(self, pool: Pool, limits: Limits) -> tuple[float, float]:
        """``(slack, max_lead)`` in counter units for a tenant in a pool."""
        slack = pool.fair_slack if pool.fair_slack is not None else limits.burst / limits.weight
        if math.isinf(slack):
            slack = 0.0
        lead = pool.fair_max_lead if pool.fair_max_lead is not None else 2.0 * slack
        return slack, max(lead, slack)


def _catalog_rates(doc: PolicyDocument) -> dict[str, tuple[float, float]]:
    """``model -> (prompt, completion)`` cost units per token derived from the catalog."""
    wanted = {name: rate for name, rate in doc.models.items() if rate.gpu}
    if not wanted:
        return {}
    try:
        catalog = load_catalog(doc.catalog or None)
    except (CatalogError, OSError) as exc:
        raise PolicyError("catalog", f"price catalog unusable: {exc}") from exc
    rates: dict[str, tuple[float, float]] = {}
    for name, rate in wanted.items():
        try:
            usd_per_s = (
                catalog.usd_per_hour(rate.gpu, rate.mig_profile, rate.pricing)
                * catalog.overhead_multiplier
                / 3600.0
            )
        except (CatalogError, KeyError) as exc:
            raise PolicyError(f"models.{name}.gpu", str(exc)) from exc
        per_s = usd_per_s if doc.unit == "usd" else 1.0
        rates[name] = (
            per_s / rate.prompt_tokens_per_gpu_s,
            per_s / rate.completion_tokens_per_gpu_s,
        )
    return rates


def _field_of(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return loc, str(first["msg"])


def parse_policy(data: dict[str, Any], version: int = 0, source: str = "") -> Policy:
    """Validate a policy mapping; raises :class:`PolicyError` with the dotted field."""
    try:
        doc = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        field, message = _field_of(exc)
        raise PolicyError(field, message) from exc
    return Policy(doc, version=version, source=source)


def load_policy_text(text: str, version: int = 0, source: str = "") -> Policy:
    """Parse and validate a TOML policy document."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError("", f"invalid TOML: {exc}") from exc
    return parse_policy(data, version=version, source=source)


def default_policy() -> Policy:
    """The policy in force without a policy file: no limits, one unlimited tier."""
    return parse_policy({}, version=0, source="defaults")
