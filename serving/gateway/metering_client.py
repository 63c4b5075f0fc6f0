"""Usage records the gateway makes itself, shipped to metering off the request path.

The collector meters what passes through it. The gateway meters what does not: cache hits
(status ``cache_hit``, with the cost they saved in the ``saved_usd`` tag), managed-API calls
(``upstream = managed``, priced by metering at the catalog's list prices) and throttled
requests. Records are queued in memory and posted in batches (``POST /v1/usage``) by a
background task, ``flush_interval_s`` after the first of a batch was queued, and on stop
(bounded wait); a failed post keeps the batch for the next attempt (bounded; overflow is
counted, never silent). Prices for the saving come from ``GET /v1/rates``, refreshed lazily.
Both calls go through the kernel's metering client (one wire, one parser); a rates lookup
sits on a cache hit's path, so it is one short attempt, while a post may be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from infermeter.kernel.dependency_auth import AUTH_STATUSES, DependencyAuth
from infermeter.kernel.errors import MeteringClientError, MeteringRefused, MeteringReplyError
from infermeter.kernel.metering_client import MeteringClient as MeteringHttp
from infermeter.kernel.metering_wire import Rates
from infermeter.kernel.records import UsageRecord

MAX_QUEUED = 50_000
BATCH = 500
POST_TIMEOUT_S = 10.0
RATES_TIMEOUT_S = 2.0


class MeteringClient:
    """Queue usage records and ship them; look up per-token rates for cache savings."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str,
        *,
        registry: CollectorRegistry,
        flush_interval_s: float = 0.5,
        rates_ttl_s: float = 60.0,
        now: Callable[[], float] = time.monotonic,
        auth: DependencyAuth | None = None,
    ) -> None:
        self._auth = auth
        self._base = base_url.rstrip("/")
        self._http = MeteringHttp(self._base, token, session=session, timeout_s=POST_TIMEOUT_S)
        self._queue: deque[UsageRecord] = deque()
        self._interval = flush_interval_s
        self._rates = Rates()
        self._rates_at = float("-inf")
        self._rates_ttl = rates_ttl_s
        self._now = now
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.shipped = Counter(
            "infermeter_gateway_usage_records",
            "Gateway-made usage records, by outcome (shipped, dropped, failed_post)",
            ["outcome"],
            registry=registry,
        )

    @property
    def enabled(self) -> bool:
        """Whether a metering URL is configured."""
        return bool(self._base)

    def submit(self, record: UsageRecord) -> None:
        """Queue one record (never blocks, never raises)."""
        if not self.enabled:
            return
        if len(self._queue) >= MAX_QUEUED:
            self._queue.popleft()
            self.shipped.labels("dropped").inc()
        self._queue.append(record)
        self._wake.set()

    def start(self) -> None:
        """Start the background shipper."""
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def pending(self) -> int:
        """Records queued and not yet accepted by metering."""
        return len(self._queue)

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Flush what is queued (waiting at most ``timeout_s``; what is left is counted as
        ``dropped``) and stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.enabled and self._queue:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), timeout=timeout_s)
            if self._queue:
                self.shipped.labels("dropped").inc(len(self._queue))
                self._queue.clear()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            # Gather a batch (and, after a failed post, back off) before posting.
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> int:
        """Post queued records now; returns how many were accepted by metering."""
        sent = 0
        while self._queue:
            batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
            try:
                await self._http.post_usage(batch)
            except MeteringReplyError:
                pass  # a 2xx: metering stored the batch, only its counts are unreadable
            except MeteringRefused as exc:
                if self._auth is not None and exc.status in AUTH_STATUSES:
                    self._auth.refused("metering", exc.status, "[gateway] metering_token")
                self.shipped.labels("failed_post").inc()
                return sent
            except MeteringClientError:
                self.shipped.labels("failed_post").inc()
                return sent
            if self._auth is not None:
                self._auth.accepted("metering")
            for _ in batch:
                self._queue.popleft()
            self.shipped.labels("shipped").inc(len(batch))
            sent += len(batch)
        return sent

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
