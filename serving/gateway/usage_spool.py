"""The gateway's own usage records on their way to metering: memory queue, durable spool, shipper.

The request path calls :meth:`UsageSpool.submit` (an append and an event set). A background
task writes the queued records to an on-disk spool (the kernel's
:class:`~infermeter.kernel.spool.Spool`, ``[gateway] spool_dir``/usage, one ``fsync`` per
batch, locked by this gateway) through the kernel's
:class:`~infermeter.kernel.spool_writer.SpoolWriter` (a disk that refuses the write: records
held in memory, readiness red, retried every ``retry_s``), and the kernel's
:class:`~infermeter.kernel.spool_shipper.Shipper` posts them to ``/v1/usage``, acknowledging
them in the spool only after metering committed them, with exponential backoff and jitter
between tries. So a record survives ``kill -9`` once it is on disk (within one turn of the
event loop after its response), a metering outage of any length up to ``spool_max_bytes``,
and a restart: the next start ships what the last one left, and metering drops replays by
``request_id``. Both tasks are supervised (restarted with backoff, counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from infermeter.kernel.dependency_auth import DependencyAuth
from infermeter.kernel.metering_client import MeteringClient, encode_records
from infermeter.kernel.metering_wire import USAGE_PATH
from infermeter.kernel.records import UsageRecord
from infermeter.kernel.spool import Spool
from infermeter.kernel.spool_shipper import Shipper, ShipperMetrics
from infermeter.kernel.spool_writer import SpoolWriter
from infermeter.kernel.supervision import supervised

log = logging.getLogger(__name__)
BATCH = 500


def _value(read: Callable[[], int]) -> float:
    return float(read())


class UsageSpool:
    """Queue gateway-made usage records, keep them on disk, ship them to metering."""

    def __init__(
        self,
        directory: str | Path,
        client: MeteringClient,
        *,
        registry: CollectorRegistry,
        max_bytes: int = 256 * 1024 * 1024,
        max_queued: int = 50_000,
        batch_interval_s: float = 0.5,
        retry_s: float = 1.0,
        timeout_s: float = 10.0,
        auth: DependencyAuth | None = None,
    ) -> None:
        self.max_queued = max_queued
        self._retry_s = retry_s
        self._queue: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = Counter(
            "infermeter_gateway_records_dropped",
            "Gateway-made usage records not kept (queue_full, spool_full, spool_unwritable)",
            ["reason"],
            registry=registry,
        )
        near_full = Gauge(
            "infermeter_gateway_spool_near_full",
            "1 when the usage spool passed its warning fraction (metering unreachable for long)",
            registry=registry,
        )
        self.spool = Spool(
            Path(directory) / "usage",
            max_bytes=max_bytes,
            on_near_full=lambda depth, cap: near_full.set(1),
            owner="gateway",
        )
        self.shipper = Shipper(
            self.spool,
            client,
            USAGE_PATH,
            "usage",
            ShipperMetrics(registry, "gateway"),
            batch_size=BATCH,
            batch_interval_s=batch_interval_s,
            timeout_s=timeout_s,
            auth=auth,
            token_setting="[gateway] metering_token",
        )
        self.writer = SpoolWriter(
            self.spool,
            max_held=max_queued,
            on_written=self.shipper.notify,
            on_dropped=lambda reason, n: self.dropped.labels(reason).inc(n),
        )
        self._restarts = Counter(
            "infermeter_gateway_task_restarts",
            "Background tasks restarted after a failure (usage_records, usage_shipper)",
            ["task"],
            registry=registry,
        )
        self._gauges(registry)

    def _gauges(self, registry: CollectorRegistry) -> None:
        for name, text, read in (
            ("spool_records", "Usage records on disk not yet acknowledged by metering",
             lambda: self.spool.pending),
            ("spool_bytes", "Bytes in the usage spool not yet acknowledged by metering",
             lambda: self.spool.depth_bytes),
            ("records_held", "Usage records held in memory because the disk refused them",
             lambda: self.writer.held),
            ("record_queue_depth", "Usage records queued in memory, not yet written to disk",
             lambda: len(self._queue)),
        ):  # fmt: skip
            gauge = Gauge(f"infermeter_gateway_{name}", text, registry=registry)
            gauge.set_function(functools.partial(_value, read))
        cap = Gauge(
            "infermeter_gateway_spool_capacity_bytes", "Size limit of the usage spool",
            registry=registry,
        )  # fmt: skip
        cap.set(self.spool.max_bytes)

    @property
    def pending(self) -> int:
        """Records not yet accepted by metering (queued, held or spooled)."""
        return len(self._queue) + self.writer.held + self.spool.pending

    def submit(self, record: UsageRecord) -> None:
        """Queue one record (never blocks, never raises; overflow is counted)."""
        if len(self._queue) >= self.max_queued:
            self._queue.popleft()
            self.dropped.labels("queue_full").inc()
        self._queue.append(record)
        self._wake.set()

    def start(self) -> None:
        """Start the spool writer and the shipper (supervised)."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        restart = self._restarts.labels
        for name, run in (("usage_records", self._write_loop), ("usage_shipper", self.shipper.run)):
            self._tasks.append(
                loop.create_task(
                    supervised(name, run, on_restart=lambda n: restart(n).inc(), log=log),
                    name=f"gateway-{name}",
                )
            )

    async def _write_loop(self) -> None:
        while True:
            await self.writer.wait(self._wake, self._retry_s)
            await self.write_queued()

    async def write_queued(self) -> None:
        """Write every queued record to the spool (or hold it when the disk refuses)."""
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            await self.writer.write(encode_records(batch))

    def problems(self) -> dict[str, str]:
        """Readiness problems: the disk refusing the spool or its ack file."""
        error = self.writer.error or self.shipper.ack_error
        if not error:
            return {}
        return {"spool": f"{error} ({self.writer.held} records held in memory)"}

    def details(self) -> dict[str, Any]:
        """The backlog as readiness shows it (informational: metering down is not unready)."""
        return {
            "records": self.spool.pending,
            "bytes": self.spool.depth_bytes,
            "held": self.writer.held,
            "queued": len(self._queue),
            "metering": self.shipper.last_error or "ok",
        }

    async def stop(self, timeout_s: float) -> None:
        """Write what is queued to disk, ship for at most ``timeout_s``, close the spool.

        What metering has not taken stays in the spool for the next start; only records the
        disk refuses to the end are lost (counted as ``spool_unwritable``)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.write_queued()
        if self.writer.held:
            await self.writer.retry()
        if self.writer.held:
            self.dropped.labels("spool_unwritable").inc(self.writer.held)
        if self.spool.pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.shipper.drain(), timeout_s)
        if self.spool.pending:
            log.warning(
                "%d usage records stay in %s; the next start ships them",
                self.spool.pending, self.spool.dir,
            )  # fmt: skip
        self.spool.close()
