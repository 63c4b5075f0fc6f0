"""Usage records the gateway makes itself, shipped to metering off the request path.

The collector meters what passes through it. The gateway meters what does not: cache hits
(status ``cache_hit``, with the cost they saved in the ``saved_usd`` tag), managed-API calls
(``upstream = managed``, priced by metering at the catalog's list prices) and throttled
requests. Records go through a durable on-disk spool (:mod:`.usage_spool`: the kernel's
spool, writer and shipper, the same as the collector's), so they survive ``kill -9``, a
metering outage and a restart. Prices for the saving come from ``GET /v1/rates``, refreshed
lazily. Both calls go through the kernel's metering client (one wire, one parser); a rates
lookup sits on a cache hit's path, so it is one short attempt, and the spool is the retry
loop of the posts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from infermeter.kernel.dependency_auth import DependencyAuth
from infermeter.kernel.errors import MeteringClientError
from infermeter.kernel.metering_client import MeteringClient as MeteringHttp
from infermeter.kernel.metering_wire import Rates
from infermeter.kernel.records import UsageRecord
from infermeter.serving.gateway.usage_spool import UsageSpool

POST_TIMEOUT_S = 10.0
RATES_TIMEOUT_S = 2.0


class MeteringClient:
    """Spool usage records and ship them; look up per-token rates for cache savings."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str,
        *,
        registry: CollectorRegistry,
        spool_dir: str | Path,
        spool_max_bytes: int = 256 * 1024 * 1024,
        flush_interval_s: float = 0.5,
        rates_ttl_s: float = 60.0,
        now: Callable[[], float] = time.monotonic,
        auth: DependencyAuth | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._http = MeteringHttp(
            self._base, token, session=session, timeout_s=POST_TIMEOUT_S, attempts=1
        )
        self._rates = Rates()
        self._rates_at = float("-inf")
        self._rates_ttl = rates_ttl_s
        self._now = now
        self.records: UsageSpool | None = None
        if self.enabled:
            self.records = UsageSpool(
                spool_dir,
                self._http,
                registry=registry,
                max_bytes=spool_max_bytes,
                batch_interval_s=flush_interval_s,
                timeout_s=POST_TIMEOUT_S,
                auth=auth,
            )

    @property
    def enabled(self) -> bool:
        """Whether a metering URL is configured."""
        return bool(self._base)

    def submit(self, record: UsageRecord) -> None:
        """Queue one record (never blocks, never raises)."""
        if self.records is not None:
            self.records.submit(record)

    def start(self) -> None:
        """Start writing the spool and shipping it."""
        if self.records is not None:
            self.records.start()

    @property
    def pending(self) -> int:
        """Records not yet accepted by metering."""
        return self.records.pending if self.records is not None else 0

    def problems(self) -> dict[str, str]:
        """Readiness problems of the usage spool (the disk refusing it)."""
        return self.records.problems() if self.records is not None else {}

    def details(self) -> dict[str, Any]:
        """The spool backlog for readiness (empty without metering)."""
        return {"usage_spool": self.records.details()} if self.records is not None else {}

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Spool what is queued, ship for at most ``timeout_s`` (the rest stays on disk for
        the next start) and stop."""
        if self.records is not None:
            await self.records.stop(timeout_s)

    async def price(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """What the tokens cost at metering's current rate for ``model`` (its ``default`` rate
        when the model has none yet; None when metering is not configured or unreachable)."""
        if not self.enabled:
            return None
        if self._now() - self._rates_at > self._rates_ttl:
            await self._refresh_rates()
        rate = self._rates.for_model(model)
        if rate is None:
            return None
        return rate.cost(prompt_tokens, completion_tokens)

    async def _refresh_rates(self) -> None:
        self._rates_at = self._now()
        try:
            self._rates = await self._http.rates(timeout_s=RATES_TIMEOUT_S, attempts=1)
        except MeteringClientError:
            return  # the last table stays in force
