"""The ``[metering]`` configuration table, validated with pydantic.

Keys (all optional; see ``infermeter.example.toml``):

- ``host``, ``port``: where ``infermeter metering serve`` listens (default 127.0.0.1:8200).
- ``storage``: ``duckdb:///path/file.duckdb`` (default ``duckdb:///<data_dir>/metering.duckdb``)
  or ``duckdb:///:memory:``.
- ``ingest_token``: bearer token for ``/v1/usage`` and ``/v1/gpu-samples`` (empty = open,
  loopback only).
- ``read_token``: bearer token for queries (empty = the ingest token also reads; both empty =
  open). The ingest token always reads too.
- ``admin_token``: bearer token for ``/v1/admin/*`` (empty = the ingest token).
- ``insecure``: serve off loopback with no ingest token (warned at every start); otherwise
  a non-loopback ``host`` without one refuses to start. Every token may also come from
  ``<key>_file`` (a mounted secret) or ``INFERMETER__METERING__<KEY>``.
- ``catalog``: a TOML file overriding entries of the shipped price catalog.
- ``window_s``: allocation window in seconds (default 60).
- ``share_idle``: share idle cost back to tenants in proportion to their use (default false).
- ``price_energy``: add the metered energy (kWh x catalog $/kWh) to the replica cost; for owned
  hardware, where the hourly price excludes power (default false).
- ``allocate_every_s``, ``allocation_lag_s``, ``reallocate_s``: the background allocation loop
  (run every N s over windows older than the lag, recomputing the last ``reallocate_s``).
- ``alert_webhook``: URL that receives a JSON POST when a budget is projected to be exceeded.
- ``[metering.replicas.<name>]``: ``gpu``, ``mig_profile``, ``count``, ``pool``, ``pricing``,
  ``model`` — the capacity a replica holds when GPU samples do not say; ``since`` — when it
  started holding it (default: when the service first ran with it, or its first usage record
  if earlier).
- ``[metering.budgets.<tenant>]``: ``daily_usd``, ``monthly_usd``.
- ``[metering.models.<served name>]``: ``profile`` (a capacity model profile; default: the
  served name, when it is one), ``quantization`` (default bf16), ``kv_dtype_bytes`` (2): the
  architecture behind the context weights of the split (:mod:`infermeter.metering.context_weights`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from infermeter.metering.context_weights import ModelSettings

Pricing = Literal["on_demand", "reserved", "spot"]


class ReplicaSettings(BaseModel):
    """Capacity held by one replica: ``count`` GPUs (or MIG slices) of one catalog type."""

    model_config = ConfigDict(extra="forbid")

    gpu: str
    mig_profile: str = ""
    count: int = Field(default=1, ge=1, le=1024)
    pool: str = ""
    pricing: Pricing = "on_demand"
    model: str = ""
    # when the replica started holding this capacity (UTC); before it nothing is charged.
    # Unset: when the metering service first ran with it, or its first usage record if earlier
    since: datetime | None = None


class BudgetSettings(BaseModel):
    """A tenant's spending limits in USD (0 = no limit for that period)."""

    model_config = ConfigDict(extra="forbid")

    daily_usd: float = Field(default=0.0, ge=0)
    monthly_usd: float = Field(default=0.0, ge=0)


class MeteringSettings(BaseModel):
    """The validated ``[metering]`` table."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8200, ge=0, le=65535)
    storage: str = ""
    data_dir: str = ".data"
    ingest_token: str = ""
    read_token: str = ""
    admin_token: str = ""
    insecure: bool = False
    catalog: str = ""
    window_s: int = Field(default=60, ge=1, le=3600)
    share_idle: bool = False
    price_energy: bool = False
    allocate_every_s: float = Field(default=60.0, ge=0)
    # the longest range one allocation run may cover (a longer one is refused: split it)
    max_allocate_days: int = Field(default=400, ge=1, le=36_600)
    allocation_lag_s: float = Field(default=120.0, ge=0)
    reallocate_s: float = Field(default=3600.0, ge=0)
    alert_webhook: str = ""
    max_body_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    replicas: dict[str, ReplicaSettings] = Field(default_factory=dict)
    budgets: dict[str, BudgetSettings] = Field(default_factory=dict)
    models: dict[str, ModelSettings] = Field(default_factory=dict)

    def storage_uri(self) -> str:
        """The storage URI, defaulting to a DuckDB file under ``data_dir``."""
        return self.storage or f"duckdb:///{self.data_dir}/metering.duckdb"
