"""Fetch metering's current $/token figures in the background (never on the decision path)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx

from infermeter.throttle.pricing import Pricer, rates_from_metering

log = logging.getLogger(__name__)


class MeteringRates:
    """Poll ``GET {url}/v1/rates`` every ``interval_s``; keep the last good table on failure."""

    def __init__(
        self,
        pricer: Pricer,
        url: str,
        token: str,
        unit: Callable[[], str],
        now: Callable[[], float],
        interval_s: float = 60.0,
        timeout_s: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._pricer = pricer
        self._url = url.rstrip("/") + "/v1/rates"
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._unit = unit
        self._now = now
        self._interval = interval_s
        self._timeout = timeout_s
        self._transport = transport
        self.failures = 0
        self.last_error = ""
        self.ok = False

    async def refresh(self) -> bool:
        """One fetch; returns whether the table was updated."""
        try:
            async with httpx.AsyncClient(timeout=self._timeout, transport=self._transport) as c:
                response = await c.get(self._url, headers=self._headers)
            response.raise_for_status()
            prices = rates_from_metering(response.json(), self._unit())
        except (httpx.HTTPError, ValueError, TypeError) as exc:
            self.failures += 1
            self.ok = False
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("metering rates unavailable (%s); using policy prices", self.last_error)
            return False
        self._pricer.set_metering(prices, self._now())
        self.ok = True
        self.last_error = ""
        return True

    async def run(self) -> None:
        """Refresh forever (cancel the task to stop)."""
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval)
