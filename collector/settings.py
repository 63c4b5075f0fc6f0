"""The ``[collector]`` table of the configuration file (see ``infermeter.example.toml``)."""

from __future__ import annotations

import socket

from pydantic import BaseModel, Field

DEFAULT_METERED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


class CollectorSettings(BaseModel):
    """Every collector setting; CLI flags override the file, the file overrides these defaults."""

    model_config = {"extra": "forbid"}

    host: str = "127.0.0.1"
    port: int = Field(8100, ge=1, le=65535)
    upstream: str = "http://127.0.0.1:8000"
    pool: str = "default"
    replica: str = ""  # defaults to <hostname>:<port>
    node: str = Field(default_factory=socket.gethostname)

    # proxy
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(300.0, gt=0)  # longest silence from the engine, per read
    force_usage: bool = True  # ask vLLM for usage on streams and strip it from the client copy
    overhead_header: bool = True  # x-infermeter-overhead-ms on every proxied response
    max_tags_bytes: int = Field(512, ge=0)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)  # larger requests: 413
    metered_paths: list[str] = Field(default_factory=lambda: list(DEFAULT_METERED_PATHS))
    upstream_connections: int = Field(1024, ge=1)

    # records → metrics / OTel / shipping
    record_queue_size: int = Field(100_000, ge=10)
    tenant_label_limit: int = Field(100, ge=1)
    model_label_limit: int = Field(100, ge=1)  # distinct model labels; the rest are "other"

    # engine scraper and signals
    scrape_interval_s: float = Field(5.0, gt=0)
    engine_metrics_path: str = "/metrics"
    throttle_url: str = ""  # POST /v1/signals there after every scrape when set
    throttle_token: str = ""  # the throttle's signals token ([throttle] signals_token)

    # NVML
    nvml: bool = True
    gpu_interval_s: float = Field(10.0, gt=0)
    engine_pid: int = Field(0, ge=0)  # the engine's pid, to tell which GPUs it uses (0: any)

    # shipping to metering
    metering_url: str = ""  # e.g. http://127.0.0.1:8200; empty: records only feed metrics
    ingest_token: str = ""
    durable_ack: bool = True  # end a response only once its usage record is fsync'd
    batch_size: int = Field(500, ge=1)
    batch_interval_s: float = Field(1.0, gt=0)
    retry_initial_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(30.0, gt=0)
    ship_timeout_s: float = Field(10.0, gt=0)
    spool_dir: str = ".data/collector-spool"
    spool_max_bytes: int = Field(256 * 1024 * 1024, ge=4096)
    spool_warn_fraction: float = Field(0.8, gt=0, le=1)
    spool_segment_bytes: int = Field(8 * 1024 * 1024, ge=1024)

    def replica_name(self) -> str:
        """This replica's name in records and signals."""
        return self.replica or f"{self.node}:{self.port}"
