"""The ``[throttle]`` table of the configuration file (see ``infermeter.example.toml``).

Tokens (each also from ``<key>_file`` or ``INFERMETER__THROTTLE__<KEY>``): ``api_token`` is
the decisions scope (gateways, the nginx check); ``signals_token`` the collectors' push and
``read_token`` the dashboards' and KEDA's reads, each falling back to ``api_token`` when
empty; ``admin_token`` the policy API (empty: disabled). Off loopback, ``api_token`` is
required unless ``insecure`` (docs/security.md).

Tenant attribution for ``/v1/check`` comes from the shared ``[tenancy]`` table
(``shared_secret``, ``default_tenant``, ``[tenancy.keys."<sha256>"]``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from infermeter.kernel.settings import Config, section
from infermeter.kernel.tenancy import TenantResolver, tenancy_from_config


class ThrottleSettings(BaseModel):
    """Every throttle setting; CLI flags override the file, the file overrides these."""

    model_config = {"extra": "forbid"}

    host: str = "127.0.0.1"
    port: int = Field(default=8300, ge=1, le=65535)
    storage: str = "memory://"  # or redis://127.0.0.1:6379/0?prefix=infermeter:throttle
    policy_file: str = ""  # TOML policy; empty: no limits until one is PUT on /v1/policy
    admin_token: str = ""  # bearer token of GET/PUT /v1/policy; empty disables the admin API
    api_token: str = ""  # decisions scope: admit, settle, check (and reads/signals if unset)
    signals_token: str = ""  # signals scope: POST /v1/signals (collectors); empty: api_token
    read_token: str = ""  # read scope: tenants, decisions, autoscale (dashboards, KEDA)
    insecure: bool = False  # allow listening off loopback with no api_token (warned at start)
    max_signal_skew_s: float = Field(default=30.0, gt=0)  # |signal ts - now| accepted
    max_pools: int = Field(default=1_000, ge=1)  # pools that may report signals at once
    max_replicas_per_pool: int = Field(default=1_000, ge=1)
    evict_after_s: float = Field(default=3_600.0, gt=0)  # idle undeclared pools forgotten
    tenant_idle_s: float = Field(default=3_600.0, gt=0)  # idle tenants' state forgotten
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)  # larger request bodies: 413
    fail_closed: bool = False  # refuse every admission while the shared storage is down
    reload_interval_s: float = Field(default=5.0, gt=0)  # policy file / shared policy poll
    probe_interval_s: float = Field(default=2.0, gt=0)  # storage reconnect probe while degraded
    signals_refresh_s: float = Field(default=2.0, gt=0)  # pool pressure recomputation
    metering_url: str = ""  # e.g. http://127.0.0.1:8200: current $/token from GET /v1/rates
    metering_token: str = ""
    rates_refresh_s: float = Field(default=60.0, gt=0)
    rates_timeout_s: float = Field(default=2.0, gt=0)
    decision_log_tenants: int = Field(default=10_000, ge=1)  # tenants kept in the decision log
    decision_log_entries: int = Field(default=1_000, ge=1)  # recent decisions kept per tenant


def load(config: Config) -> tuple[ThrottleSettings, TenantResolver]:
    """The throttle settings and the tenant resolver from the merged configuration."""
    settings = section(config, "throttle", ThrottleSettings)
    return settings, tenancy_from_config(config)[0]


def override(settings: ThrottleSettings, **values: Any) -> ThrottleSettings:
    """A copy with the non-None ``values`` applied (CLI flags)."""
    changes = {k: v for k, v in values.items() if v is not None}
    return settings.model_copy(update=changes) if changes else settings
