"""Poll engine signals of self-hosted replicas for the router.

By default a replica's collector is asked for ``GET /v1/signals`` (JSON, the body the
collector pushes to the throttle); a ``signals_url`` ending in ``/metrics`` is read as a
Prometheus exposition with vLLM's gauges instead (an engine or simulator polled directly).
A reading's age is measured from the collector's own timestamp, so a collector that stopped
scraping its engine does not look fresh. Failures leave the last reading to go stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import orjson

from infermeter.serving.gateway.routing import Replica, ReplicaLoad, parse_engine_gauges


def signals_from_json(payload: Any, received_mono: float, wall_now: float) -> ReplicaLoad | None:
    """Sum the collector's per-model signals into one reading (KV usage: the maximum)."""
    items = payload if isinstance(payload, list) else [payload]
    sig: ReplicaLoad | None = None
    for item in items:
        if not isinstance(item, dict):
            continue
        ts = item.get("ts")
        age = max(0.0, wall_now - float(ts)) if isinstance(ts, int | float) else 0.0
        if sig is None:
            sig = ReplicaLoad(ts=received_mono - age)
        sig.ts = min(sig.ts, received_mono - age)
        sig.waiting += _num(item.get("num_requests_waiting"))
        sig.running += _num(item.get("num_requests_running"))
        sig.kv_cache_usage = max(sig.kv_cache_usage, _num(item.get("kv_cache_usage_perc")))
    return sig


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class SignalPoller:
    """Refresh ``replica.signals`` for every replica every ``interval_s``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        replicas: Iterable[Replica],
        *,
        interval_s: float,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._replicas = list(replicas)
        self._interval = interval_s
        self._mono = monotonic
        self._wall = wall
        self._task: asyncio.Task[None] | None = None

    async def poll_once(self) -> None:
        """Read every replica's signals once."""
        await asyncio.gather(*(self._poll(r) for r in self._replicas))

    async def _poll(self, replica: Replica) -> None:
        try:
            async with self._session.get(
                replica.signals_url, timeout=aiohttp.ClientTimeout(total=1.0)
            ) as resp:
                if resp.status != 200:
                    return
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return
        now = self._mono()
        if replica.signals_url.endswith("/metrics"):
            replica.signals = parse_engine_gauges(raw.decode("utf-8", "replace"), now)
            return
        try:
            sig = signals_from_json(orjson.loads(raw), now, self._wall())
        except orjson.JSONDecodeError:
            return
        if sig is not None:
            replica.signals = sig

    def start(self) -> None:
        """Start polling in the background."""
        if self._replicas and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
