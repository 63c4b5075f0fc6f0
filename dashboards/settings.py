"""The ``[dashboard]`` configuration table.

Keys (all optional; see ``infermeter.example.toml``):

- ``host``, ``port``: where ``infermeter dashboard`` listens (default 127.0.0.1:8501).
- ``metering_url``: the metering service (default http://127.0.0.1:8200).
- ``throttle_url``: the throttle service (default http://127.0.0.1:8300).
- ``read_token``: metering read token (empty: ``[metering] read_token``, else its
  ``ingest_token``).
- ``throttle_token``: bearer token for throttle's reads (empty: ``[throttle] read_token``, else
  ``api_token``).
- ``timeout_s``: per-request timeout against the services (default 3).
- ``refresh_s``: default auto-refresh interval of the pages in seconds (0 = off; default 30).
- ``max_tenants``: how many tenants the Tenants page asks throttle about (default 50).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from infermeter.kernel.settings import Config


class DashboardSettings(BaseModel):
    """The validated ``[dashboard]`` table."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8501, ge=1, le=65535)
    metering_url: str = "http://127.0.0.1:8200"
    throttle_url: str = "http://127.0.0.1:8300"
    read_token: str = ""
    throttle_token: str = ""
    timeout_s: float = Field(default=3.0, gt=0, le=60)
    refresh_s: int = Field(default=30, ge=0, le=3600)
    max_tenants: int = Field(default=50, ge=1, le=1000)
    # the app has no login: bind off loopback only with this (or --insecure), behind an SSO proxy
    insecure: bool = False


def load_settings(config: Config) -> DashboardSettings:
    """``[dashboard]`` with tokens falling back to the metering and throttle tables."""
    from infermeter.kernel.settings import section

    settings = section(config, "dashboard", DashboardSettings)
    updates: dict[str, str] = {}
    if not settings.read_token:
        metering = config.table("metering")
        token = metering.get("read_token") or metering.get("ingest_token") or ""
        if token:
            updates["read_token"] = str(token)
    if not settings.throttle_token:
        throttle = config.table("throttle")
        token = throttle.get("read_token") or throttle.get("api_token") or ""
        if token:
            updates["throttle_token"] = str(token)
    return settings.model_copy(update=updates) if updates else settings
