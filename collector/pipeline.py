"""Finished records off the request path: a bounded in-memory queue and its consumer.

The proxy calls :meth:`RecordPipeline.submit` (an append and an event set). A background task
turns each record into the metering contract's :class:`~infermeter.kernel.records.UsageRecord`,
updates Prometheus and any telemetry exporters (OpenTelemetry), and appends the batch to the
spool (one ``fsync``) for the shipper. With ``durable_ack`` the proxy waits, before it ends a
response, until its record is on disk: a ``kill -9`` then loses nothing that a client saw
finish. Exporter failures are counted and logged, never raised into the proxy.

When the disk refuses the spool write (ENOSPC, EIO, a read-only remount) the records are
held in a bounded in-memory backlog (the kernel's
:class:`~infermeter.kernel.spool_writer.SpoolWriter`: ``records_held``; beyond ``maxsize``
the oldest are dropped and counted), readiness names the error, and the write is retried at
every batch and every ``retry_s`` until the disk takes it: nothing waits on the dead disk
(durable acks are released) and nothing is lost while the backlog has room.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import Protocol

import orjson

from infermeter.collector.prompt_tokens import PromptCounter
from infermeter.collector.record import RequestRecord, inter_token_gaps, to_usage_record
from infermeter.collector.request_metrics import RequestMetrics
from infermeter.kernel.records import UsageRecord
from infermeter.kernel.spool import Spool
from infermeter.kernel.spool_writer import SpoolWriter

log = logging.getLogger(__name__)
BATCH = 256
YIELD_EVERY = 8  # records accounted between two turns of the event loop


class RecordExporter(Protocol):
    """Something that consumes finished usage records (e.g. OpenTelemetry)."""

    def export(self, rec: UsageRecord, gaps: Sequence[float]) -> None: ...


class Notifiable(Protocol):
    def notify(self) -> None: ...


class RecordPipeline:
    """Bounded queue of finished records and the task that consumes it."""

    def __init__(
        self,
        metrics: RequestMetrics,
        *,
        pool: str,
        replica: str,
        maxsize: int = 100_000,
        spool: Spool | None = None,
        shipper: Notifiable | None = None,
        exporters: Sequence[RecordExporter] = (),
        durable_ack: bool = False,
        prompt_counter: PromptCounter | None = None,
        retry_s: float = 1.0,
    ) -> None:
        self.metrics = metrics
        self.prompt_counter = prompt_counter
        self.pool = pool
        self.replica = replica
        self.maxsize = maxsize
        self.spool = spool
        self.shipper = shipper
        self.exporters = list(exporters)
        self.durable_ack = durable_ack and spool is not None
        self._items: deque[RequestRecord] = deque()
        self._wake = asyncio.Event()
        self._dropped_full = metrics.records_dropped.labels("queue_full")
        self._export_failed = metrics.records_dropped.labels("exporter_error")
        dropped = {r: metrics.records_dropped.labels(r) for r in ("spool_full", "spool_unwritable")}
        metrics.queue_depth.set_function(lambda: len(self._items))
        self.writer = (
            SpoolWriter(
                spool,
                max_held=maxsize,
                on_written=shipper.notify if shipper is not None else None,
                on_dropped=lambda reason, n: dropped[reason].inc(n),
            )
            if spool is not None
            else None
        )
        metrics.records_held.set_function(lambda: self.held)
        self.retry_s = retry_s
        self.processed = 0

    def submit(self, rec: RequestRecord) -> None:
        """Queue a finished record (called on the request path)."""
        if len(self._items) >= self.maxsize:
            self._dropped_full.inc()
            log.error("record queue full (%d): dropping record %s", self.maxsize, rec.request_id)
            return
        if self.durable_ack:
            rec.durable = asyncio.get_running_loop().create_future()
        self._items.append(rec)
        self._wake.set()

    @property
    def held(self) -> int:
        """Records kept in memory because the disk refused them."""
        return self.writer.held if self.writer is not None else 0

    @property
    def spool_error(self) -> str:
        """The disk's refusal while records are held, else ``""``."""
        return self.writer.error if self.writer is not None else ""

    async def run(self) -> None:
        """Consume forever (until cancelled); while records are held, retry every retry_s."""
        while True:
            if self.writer is not None:
                await self.writer.wait(self._wake, self.retry_s)
            else:
                await self._wake.wait()
                self._wake.clear()
            while self._items:
                await self.process_batch()

    async def process_batch(self) -> None:
        """Take up to one batch off the queue and account for it."""
        batch: list[RequestRecord] = []
        while self._items and len(batch) < BATCH:
            batch.append(self._items.popleft())
        lines: list[bytes] = []
        for i, rec in enumerate(batch):
            if i and not i % YIELD_EVERY:
                await asyncio.sleep(0)  # let the proxy run: a batch must not stall streams
            counter = self.prompt_counter
            if counter is not None and counter.wanted(rec):
                await counter.fill(rec)  # an aborted stream: usage never came
            rec.body = b""
            usage = to_usage_record(rec, pool=self.pool, replica=self.replica)
            gaps = inter_token_gaps(rec.token_times) if rec.stream else []
            self.metrics.observe(usage, gaps)
            self.metrics.overhead.observe(rec.overhead_s)
            for exporter in self.exporters:
                try:
                    exporter.export(usage, gaps)
                except Exception:  # an exporter must never break accounting
                    self._export_failed.inc()
                    log.exception("telemetry exporter %r failed", exporter)
            if self.spool is not None:
                lines.append(orjson.dumps(usage.to_json()))
        if lines and self.writer is not None:
            await self.writer.write(lines)
        for rec in batch:
            if rec.durable is not None and not rec.durable.done():
                rec.durable.set_result(None)
        self.processed += len(batch)

    async def drain(self) -> None:
        """Process everything queued (used at shutdown)."""
        while self._items:
            await self.process_batch()
