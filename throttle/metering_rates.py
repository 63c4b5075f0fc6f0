"""Fetch metering's current $/token figures in the background (never on the decision path)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from infermeter.kernel.errors import MeteringClientError
from infermeter.kernel.metering_client import MeteringClient
from infermeter.throttle.pricing import Pricer, rates_from_metering

log = logging.getLogger(__name__)


class MeteringRates:
    """Poll ``GET {url}/v1/rates`` every ``interval_s``; keep the last good table on failure.

    Each refresh goes through the kernel's metering client (``client``, else one opened for
    the refresh and closed after it), which retries a transient failure with backoff.
    """

    def __init__(
        self,
        pricer: Pricer,
        url: str,
        token: str,
        unit: Callable[[], str],
        now: Callable[[], float],
        interval_s: float = 60.0,
        timeout_s: float = 2.0,
        client: MeteringClient | None = None,
    ) -> None:
        self._pricer = pricer
        self._url = url
        self._token = token
        self._unit = unit
        self._now = now
        self._interval = interval_s
        self._timeout = timeout_s
        self._client = client
        self.failures = 0
        self.last_error = ""
        self.ok = False

    async def refresh(self) -> bool:
        """One fetch; returns whether the table was updated."""
        try:
            if self._client is not None:
                rates = await self._client.rates(timeout_s=self._timeout)
            else:
                async with MeteringClient(self._url, self._token, timeout_s=self._timeout) as c:
                    rates = await c.rates()
        except MeteringClientError as exc:
            self.failures += 1
            self.ok = False
            self.last_error = str(exc)
            log.warning("metering rates unavailable (%s); using policy prices", self.last_error)
            return False
        if rates.invalid:
            log.warning("metering rates: left out %s", "; ".join(rates.invalid.values()))
        self._pricer.set_metering(rates_from_metering(rates, self._unit()), self._now())
        self.ok = True
        self.last_error = ""
        return True

    async def run(self) -> None:
        """Refresh forever (cancel the task to stop)."""
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval)
