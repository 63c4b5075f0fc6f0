"""The ``[gateway]`` configuration table (see ``infermeter.example.toml``).

Pools map a model name (as clients send it) to an upstream: ``self_hosted`` (a list of
replica collector URLs) or ``managed`` (an OpenAI-compatible base URL whose API key is read
from an environment variable). Switching a model between the two is a change of this table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplicaSettings(_Strict):
    """One self-hosted replica, reached through its collector."""

    name: str = Field("", description="replica name in metrics (default: host:port)")
    url: str = Field(description="collector base URL, e.g. http://127.0.0.1:8100")
    signals_url: str = Field(
        "", description="Prometheus text with vllm: gauges (default: <url>/metrics)"
    )


class PoolSettings(_Strict):
    """Where one model is served."""

    upstream: Literal["self_hosted", "managed"] = "self_hosted"
    pool: str = Field("", description="pool name for the throttle and metering (default: model)")
    replicas: list[ReplicaSettings] = Field(default_factory=list)
    base_url: str = Field("", description="managed: OpenAI-compatible base URL ending in /v1")
    api_key_env: str = Field("", description="managed: environment variable holding the key")
    upstream_model: str = Field("", description="model name sent upstream (default: same)")
    job_concurrency: int = Field(4, ge=1, description="async job workers for this pool")

    @model_validator(mode="after")
    def _check(self) -> PoolSettings:
        if self.upstream == "self_hosted" and not self.replicas:
            raise ValueError("a self_hosted pool needs at least one replica")
        if self.upstream == "managed" and not self.base_url:
            raise ValueError("a managed pool needs base_url")
        return self


class TenantCacheSettings(_Strict):
    """Per-tenant cache policy."""

    enabled: bool = True
    allow_nondeterministic: bool = Field(
        False, description="also cache requests with temperature > 0 (opt-in)"
    )


class CacheSettings(_Strict):
    """Semantic cache."""

    enabled: bool = False
    backend: Literal["local", "http"] = Field(
        "local", description="embeddings: in-process numpy MiniLM, or a /v1/embeddings endpoint"
    )
    embeddings_url: str = Field("", description="http backend: base URL serving /v1/embeddings")
    embeddings_model: str = Field("all-MiniLM-L6-v2", description="http backend: model name")
    embeddings_truncate_tokens: int = Field(
        256, ge=0, description="http backend: vLLM's truncate_prompt_tokens (0: not sent)"
    )
    threshold: float = Field(0.93, gt=0.0, le=1.0, description="minimum cosine similarity")
    ttl_s: float = Field(3600.0, gt=0.0)
    max_entries_per_tenant: int = Field(10_000, ge=1)
    max_entries: int = Field(100_000, ge=1)
    tenants: dict[str, TenantCacheSettings] = Field(default_factory=dict)


class JobSettings(_Strict):
    """Async jobs."""

    queue: str = Field("memory://", description="memory:// or redis://host:port/db?prefix=name")
    deadline_s: float = Field(600.0, gt=0.0, description="a job waiting for the throttle fails")
    max_attempts: int = Field(3, ge=1, description="redis: deliveries before dead-lettering")
    claim_idle_s: float = Field(30.0, gt=0.0, description="redis: reclaim a dead worker's job")
    retention_s: float = Field(86_400.0, gt=0.0, description="how long results are kept")
    max_throttle_wait_s: float = Field(5.0, gt=0.0, description="longest single wait")


class GatewaySettings(_Strict):
    """``[gateway]``."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    throttle_url: str = Field("", description="throttle base URL; empty: no admission control")
    throttle_timeout_s: float = Field(0.5, gt=0.0)
    throttle_failure_mode: Literal["open", "closed"] = "open"
    throttle_token: str = Field("", description="throttle decisions token ([throttle] api_token)")
    metering_url: str = Field("", description="metering base URL for gateway-made records")
    metering_token: str = Field("", description="metering ingest/read token")
    connect_timeout_s: float = Field(2.0, gt=0.0)
    read_timeout_s: float = Field(600.0, gt=0.0)
    connect_retries: int = Field(2, ge=0, description="other replicas tried on connect failure")
    signal_max_age_s: float = Field(5.0, gt=0.0, description="engine signals older are ignored")
    signal_poll_s: float = Field(1.0, gt=0.0, description="0 disables polling of /metrics")
    default_max_tokens: int = Field(256, ge=1, description="admission estimate when absent")
    metering_flush_s: float = Field(0.5, gt=0.0, description="usage records are posted this often")
    spool_dir: str = Field(
        ".data/gateway-spool",
        description="on-disk spool of gateway-made usage records (locked by one gateway)",
    )
    spool_max_bytes: int = Field(256 * 1024 * 1024, ge=4096, description="spool size limit")
    max_jobs_per_tenant: int = Field(
        100, ge=1, description="async jobs one tenant may have queued or running (else 429)"
    )
    shutdown_grace_s: float = Field(
        5.0, ge=0.0, description="on stop, how long in-flight requests may take to finish"
    )
    shutdown_flush_s: float = Field(
        2.0, gt=0.0, description="on stop, longest wait to post queued usage records"
    )
    models: dict[str, PoolSettings] = Field(default_factory=dict)
    cache: CacheSettings = Field(default_factory=lambda: CacheSettings.model_validate({}))
    jobs: JobSettings = Field(default_factory=lambda: JobSettings.model_validate({}))
