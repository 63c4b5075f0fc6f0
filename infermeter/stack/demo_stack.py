"""The configuration ``infermeter up`` generates for one run, under its data directory.

``up`` wires every service through one generated ``infermeter.toml`` (the same file format a
user writes by hand) plus a throttle policy, both rewritten on every start from the layout
(ports, replicas) so they always match what runs. Secrets (the gateway's shared secret,
metering's ingest and read tokens, throttle's decisions, signals, read and admin tokens, one
API key per demo tenant) are
created once in ``secrets.json`` (mode 0600) and reused, so a second ``up`` on the same data
directory serves the same keys and reads the same DuckDB file.

Files under the data directory::

    infermeter.toml        generated configuration of every service
    throttle-policy.toml   generated policy: demo tiers and tenants, prices, pool pressure
    secrets.json           tokens and demo API keys (kept across runs)
    metering.duckdb        metering's store (kept across runs)
    spool/<replica>/       each collector's on-disk spool (kept: unsent records survive)
    demo-traffic.json      what the demo traffic generator sent and got back
    logs/<service>.log     one log per service
    up.lock                held by the running ``up`` (stack/up_cli.py)
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from infermeter.kernel.errors import ConfigError
from infermeter.kernel.tenancy import hash_key

DEMO_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
POOL = "llama-8b"


@dataclass(frozen=True)
class DemoTenant:
    """One tenant of the demo traffic and its place in the throttle policy."""

    name: str
    tier: str
    habit: str
    description: str


TENANTS: tuple[DemoTenant, ...] = (
    DemoTenant("acme", "gold", "chatty", "chatty short prompts, streamed"),
    DemoTenant("globex", "silver", "summaries", "long-document summaries"),
    DemoTenant("initech", "free", "batch", "heavy batch bursts over its free-tier limits"),
    DemoTenant("umbrella", "silver", "jobs", "async jobs (POST /v1/jobs, results by SSE)"),
    DemoTenant("hooli", "gold", "repeats", "repeated questions (semantic cache hits)"),
)

# Tiers in USD per minute, sized for the simulated 8B model so that gold and silver never
# hit a limit in the demo while the free tier's concurrency cap and small burst do.
TIERS: dict[str, dict[str, float | int]] = {
    "gold": {"rate": 5.0, "per_s": 60, "burst": 2.0, "concurrency": 64, "weight": 4.0},
    "silver": {"rate": 1.0, "per_s": 60, "burst": 0.5, "concurrency": 16, "weight": 2.0},
    "free": {
        "rate": 0.002,
        "per_s": 60,
        "burst": 0.0005,
        "concurrency": 2,
        "daily_budget": 1.0,
        "monthly_budget": 20.0,
        "weight": 1.0,
    },
}
# Fallback prices (USD per token) until metering's /v1/rates has figures from real traffic.
FALLBACK_PRICES = {"prompt": 5.0e-8, "completion": 2.0e-7}


@dataclass(frozen=True)
class Replica:
    """One engine and the collector in front of it."""

    name: str
    gpu: str  # simulator GPU profile, "gpu" or "gpu:mig_profile"
    engine_port: int
    collector_port: int

    @property
    def catalog_gpu(self) -> tuple[str, str]:
        """(GPU type, MIG profile) as metering's price catalog names them."""
        gpu, _, mig = self.gpu.partition(":")
        return gpu, mig


@dataclass(frozen=True)
class StackLayout:
    """Where every service of one ``up`` run listens and keeps its files."""

    host: str
    data_dir: Path
    model: str
    replicas: tuple[Replica, ...]
    metering_port: int
    throttle_port: int
    gateway_port: int
    dashboard_port: int
    pool: str = POOL
    insecure: bool = False  # --insecure: the dashboards (no login) may bind off loopback

    @property
    def connect_host(self) -> str:
        """Where clients on this machine reach a service bound to ``host``."""
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
        return wildcard.get(self.host, self.host)

    def url(self, port: int) -> str:
        host = self.connect_host
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def metering_url(self) -> str:
        return self.url(self.metering_port)

    @property
    def throttle_url(self) -> str:
        return self.url(self.throttle_port)

    @property
    def gateway_url(self) -> str:
        return self.url(self.gateway_port)

    @property
    def dashboard_url(self) -> str:
        return self.url(self.dashboard_port)

    @property
    def config_path(self) -> Path:
        return self.data_dir / "infermeter.toml"

    @property
    def policy_path(self) -> Path:
        return self.data_dir / "throttle-policy.toml"

    @property
    def secrets_path(self) -> Path:
        return self.data_dir / "secrets.json"

    @property
    def traffic_stats_path(self) -> Path:
        return self.data_dir / "demo-traffic.json"

    @property
    def storage_path(self) -> Path:
        return self.data_dir / "metering.duckdb"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def spool_dir(self, replica: Replica) -> Path:
        return self.data_dir / "spool" / replica.name


TOKEN_NAMES = (
    "shared_secret", "ingest_token", "read_token", "admin_token",
    "throttle_token", "signals_token", "throttle_read_token",
)  # fmt: skip


@dataclass(frozen=True)
class Secrets:
    """Tokens and demo API keys, created once per data directory."""

    shared_secret: str
    ingest_token: str
    read_token: str
    admin_token: str
    api_keys: dict[str, str]  # tenant -> clear-text key
    throttle_token: str = ""  # the throttle's decisions scope (gateway)
    signals_token: str = ""  # the throttle's signals scope (collectors)
    throttle_read_token: str = ""  # the throttle's read scope (dashboards)

    @classmethod
    def load_or_create(
        cls, path: Path, token: Callable[[int], str] = secrets.token_urlsafe
    ) -> Secrets:
        """Read ``path``; create what is missing (new tenants included) and save it."""
        data: dict[str, Any] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"unreadable: {exc}", source=str(path)) from exc
            if not isinstance(data, dict):
                raise ConfigError("must be a JSON object", source=str(path))
        before = json.dumps(data, sort_keys=True)
        for name in TOKEN_NAMES:
            if not isinstance(data.get(name), str) or not data[name]:
                data[name] = token(24)
        keys = data.get("api_keys")
        keys = dict(keys) if isinstance(keys, dict) else {}
        for tenant in TENANTS:
            if not isinstance(keys.get(tenant.name), str) or not keys[tenant.name]:
                keys[tenant.name] = f"sk-demo-{tenant.name}-{token(18)}"
        data["api_keys"] = keys
        if json.dumps(data, sort_keys=True) != before:
            _write_private(path, json.dumps(data, indent=2) + "\n")
        return cls(
            shared_secret=data["shared_secret"],
            ingest_token=data["ingest_token"],
            read_token=data["read_token"],
            admin_token=data["admin_token"],
            api_keys={t.name: keys[t.name] for t in TENANTS},
            throttle_token=data["throttle_token"],
            signals_token=data["signals_token"],
            throttle_read_token=data["throttle_read_token"],
        )


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def policy_document(layout: StackLayout) -> dict[str, Any]:
    """The throttle policy of the demo: its tiers, tenants, prices and pool."""
    return {
        "unit": "usd",
        "default_tier": "free",
        "tiers": TIERS,
        "tenants": {t.name: {"tier": t.tier} for t in TENANTS},
        "models": {"*": {**FALLBACK_PRICES, "pool": layout.pool}},
        "pools": {
            layout.pool: {
                "queue_per_replica": 8,
                "kv_cache_usage": 0.85,
                "ttft_p95_slo_s": 2.0,
                "fair_share": True,
                "autoscale": {
                    "min_replicas": 1,
                    "max_replicas": 8,
                    "targets": {"num_requests_waiting": 5, "kv_cache_usage_perc": 0.8},
                },
            }
        },
    }


def config_document(
    layout: StackLayout,
    keys: Secrets,
    engine_tables: Mapping[str, Mapping[str, Any]],
    catalog: str = "",
) -> dict[str, Any]:
    """The generated ``infermeter.toml``: every service's table, wired to the layout.

    ``engine_tables`` (the user's ``[simulator]`` / ``[vllm]`` tables) are copied as they are,
    so engine options still come from the user's configuration; ``catalog`` is the user's
    price-catalog override file for metering (empty: the shipped prices).
    """
    host = layout.host
    return {
        **{name: dict(table) for name, table in engine_tables.items()},
        "tenancy": {
            "shared_secret": keys.shared_secret,
            "default_tenant": "anonymous",
            "keys": {
                hash_key(keys.api_keys[t.name]): {
                    "tenant": t.name,
                    "key_id": f"{t.name}-demo",
                    "tier": t.tier,
                }
                for t in TENANTS
            },
        },
        "metering": {
            "host": host,
            "port": layout.metering_port,
            "data_dir": str(layout.data_dir),
            "storage": f"duckdb:///{layout.storage_path}",
            "ingest_token": keys.ingest_token,
            "read_token": keys.read_token,
            "catalog": catalog,
            # short windows allocated every few seconds: costs show up ~15 s after a request
            "window_s": 10,
            "allocate_every_s": 3.0,
            "allocation_lag_s": 3.0,
            "reallocate_s": 600.0,
            "replicas": {
                r.name: {
                    "gpu": r.catalog_gpu[0],
                    "mig_profile": r.catalog_gpu[1],
                    "pool": layout.pool,
                }
                for r in layout.replicas
            },
            "budgets": {"initech": {"daily_usd": 1.0, "monthly_usd": 20.0}},
        },
        "collector": {
            "host": host,
            "pool": layout.pool,
            "metering_url": layout.metering_url,
            "ingest_token": keys.ingest_token,
            "throttle_url": layout.throttle_url,
            "throttle_token": keys.signals_token,
            "scrape_interval_s": 2.0,
            "batch_interval_s": 1.0,
        },
        "throttle": {
            "host": host,
            "port": layout.throttle_port,
            "policy_file": str(layout.policy_path),
            "admin_token": keys.admin_token,
            "api_token": keys.throttle_token,
            "signals_token": keys.signals_token,
            "read_token": keys.throttle_read_token,
            "metering_url": layout.metering_url,
            "metering_token": keys.read_token,
            "rates_refresh_s": 15.0,
        },
        "gateway": {
            "host": host,
            "port": layout.gateway_port,
            "throttle_url": layout.throttle_url,
            "throttle_token": keys.throttle_token,
            "metering_url": layout.metering_url,
            "metering_token": keys.ingest_token,
            "spool_dir": str(layout.data_dir / "gateway-spool"),
            "models": {
                layout.model: {
                    "upstream": "self_hosted",
                    "pool": layout.pool,
                    "replicas": [
                        {"name": r.name, "url": layout.url(r.collector_port)}
                        for r in layout.replicas
                    ],
                    "job_concurrency": 4,
                }
            },
            "cache": {"enabled": True, "backend": "local"},
            "jobs": {"queue": "memory://"},
        },
        "dashboard": {
            "host": host,
            "port": layout.dashboard_port,
            "metering_url": layout.metering_url,
            "throttle_url": layout.throttle_url,
            "read_token": keys.read_token,
            "throttle_token": keys.throttle_read_token,
            "refresh_s": 10,
            "insecure": layout.insecure,
        },
    }


def write_stack(
    layout: StackLayout,
    keys: Secrets,
    engine_tables: Mapping[str, Mapping[str, Any]],
    catalog: str = "",
) -> None:
    """Write the configuration and the policy of this run (replacing the previous ones)."""
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    for replica in layout.replicas:
        layout.spool_dir(replica).mkdir(parents=True, exist_ok=True)
    header = "# Generated by `infermeter up` on every start; edit your own config instead.\n"
    _write_private(
        layout.config_path,
        header + tomli_w.dumps(config_document(layout, keys, engine_tables, catalog)),
    )
    layout.policy_path.write_text(header + tomli_w.dumps(policy_document(layout)), encoding="utf-8")
