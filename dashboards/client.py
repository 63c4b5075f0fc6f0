"""Typed HTTP clients of the metering and throttle APIs, the only way pages get data.

Every call has a short timeout; a refused connection or timeout raises
:class:`~infermeter.dashboards.errors.ServiceUnavailable`, an error status raises
:class:`~infermeter.dashboards.errors.ServiceError` carrying the service's own message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infermeter.dashboards.errors import ServiceError, ServiceUnavailable
from infermeter.kernel.errors import MeteringReplyError
from infermeter.kernel.metering_wire import RATES_PATH, Rates, parse_rates


@dataclass(frozen=True)
class TimeRange:
    """A closed-open UTC interval ``[since, until)``."""

    since: datetime
    until: datetime

    @property
    def seconds(self) -> float:
        return (self.until - self.since).total_seconds()

    def params(self) -> dict[str, str]:
        return {"since": _iso(self.since), "until": _iso(self.until)}


@dataclass(frozen=True)
class Sample:
    """One Prometheus sample from a ``/metrics`` scrape."""

    name: str
    labels: dict[str, str]
    value: float


def _iso(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="seconds") + "Z"


class _Http:
    def __init__(
        self,
        service: str,
        base_url: str,
        token: str,
        timeout_s: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    def close(self) -> None:
        self._client.close()

    def _send(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        try:
            return self._client.get(path, params={k: v for k, v in (params or {}).items() if v})
        except httpx.TimeoutException:
            raise ServiceUnavailable(self.service, self.base_url, "timed out") from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise ServiceUnavailable(self.service, self.base_url, reason) from None

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        response = self._send(path, params)
        if response.status_code >= 400:
            raise self._error(response)
        try:
            return response.json()
        except ValueError:
            raise ServiceError(self.service, response.status_code, "invalid JSON") from None

    def _error(self, response: httpx.Response) -> ServiceError:
        message, param = response.text[:300] or response.reason_phrase, None
        try:
            err = response.json().get("error", {})
            if isinstance(err, dict):
                message = str(err.get("message") or message)
                param = err.get("param")
        except (ValueError, AttributeError):
            pass
        return ServiceError(self.service, response.status_code, message, param)


class MeteringClient(_Http):
    """``GET`` endpoints of the metering service (read token)."""

    def __init__(
        self,
        base_url: str,
        token: str = "",
        timeout_s: float = 3.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__("metering", base_url, token, timeout_s, transport)

    def cost(
        self,
        by: str,
        window: TimeRange,
        granularity: str = "day",
        tenant: str = "",
        model: str = "",
    ) -> dict[str, Any]:
        params = {**window.params(), "by": by, "granularity": granularity}
        return dict(self.get("/v1/reports/cost", {**params, "tenant": tenant, "model": model}))

    def idle(self, by: str, window: TimeRange, granularity: str = "day") -> dict[str, Any]:
        params = {**window.params(), "by": by, "granularity": granularity}
        return dict(self.get("/v1/reports/idle", params))

    def buy_vs_build(self, window: TimeRange) -> dict[str, Any]:
        return dict(self.get("/v1/reports/buy-vs-build", window.params()))

    def latency(
        self,
        window: TimeRange,
        granularity: str = "hour",
        model: str = "",
        tenant: str = "",
        by: str = "",
    ) -> dict[str, Any]:
        params = {
            **window.params(),
            "granularity": granularity,
            "model": model,
            "tenant": tenant,
            "by": by,
        }
        return dict(self.get("/v1/reports/latency", params))

    def gpu(
        self, window: TimeRange, granularity: str = "minute", replica: str = ""
    ) -> dict[str, Any]:
        params = {**window.params(), "granularity": granularity, "replica": replica}
        return dict(self.get("/v1/reports/gpu", params))

    def cache_savings(self, window: TimeRange) -> dict[str, Any]:
        return dict(self.get("/v1/reports/cache-savings", window.params()))

    def budgets(self) -> dict[str, Any]:
        return dict(self.get("/v1/budgets"))

    def rates(self) -> Rates:
        """Metering's current rates table, read by the kernel's one parser."""
        try:
            return parse_rates(self.get(RATES_PATH))
        except MeteringReplyError as exc:
            raise ServiceError(self.service, 200, exc.message, exc.field) from None

    def request(self, request_id: str) -> dict[str, Any] | None:
        """One request's record and cost breakdown; None when metering does not know it."""
        response = self._send(f"/v1/requests/{quote(request_id, safe='')}")
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise self._error(response)
        return dict(response.json())


class ThrottleClient(_Http):
    """Read endpoints of the throttle service."""

    def __init__(
        self,
        base_url: str,
        token: str = "",
        timeout_s: float = 3.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__("throttle", base_url, token, timeout_s, transport)

    def tenant_usage(self, tenant: str) -> dict[str, Any]:
        return dict(self.get(f"/v1/tenants/{quote(tenant, safe='')}/usage"))

    def tenants(self, limit: int = 1000) -> dict[str, Any]:
        """The tenants throttle knows (policy or recent decisions), with their usage."""
        return dict(self.get("/v1/tenants", {"limit": str(limit)}))

    def decisions(self, tenant: str, since: datetime) -> dict[str, Any]:
        """The tenant's recent admission decisions since ``since`` (this throttle replica's
        bounded log), oldest first, and their counts by reason."""
        path = f"/v1/tenants/{quote(tenant, safe='')}/decisions"
        return dict(self.get(path, {"since": _iso(since)}))

    def autoscale(self) -> list[dict[str, Any]]:
        return list(self.get("/v1/autoscale").get("pools", []))

    def metrics(self, prefix: str = "") -> list[Sample]:
        """The samples of ``/metrics`` whose name starts with ``prefix``."""
        response = self._send("/metrics")
        if response.status_code >= 400:
            raise self._error(response)
        try:
            families = list(text_string_to_metric_families(response.text))
        except ValueError as exc:
            raise ServiceError(
                self.service, response.status_code, f"bad exposition: {exc}"
            ) from None
        return [
            Sample(s.name, dict(s.labels), float(s.value))
            for family in families
            for s in family.samples
            if s.name.startswith(prefix)
        ]
