"""Ships spooled payloads to metering in order: batches by size and time, retry with backoff.

One :class:`Shipper` per spool and destination: the collector's usage records
(``/v1/usage``) and GPU samples (``/v1/gpu-samples``), the gateway's own usage records
(``/v1/usage``). Its counters are named after the ``service`` that ships
(``infermeter_<service>_shipped_records`` …), and a 401/403 names that service's token
setting (``token_setting``) in the :class:`~infermeter.kernel.dependency_auth.DependencyAuth`
refusal. Payloads are acknowledged in the spool only after metering answered 200,
which it does only once the batch is durably committed (docs/api-contracts.md); a crash
between the two replays the batch, and metering ignores the duplicates by key. Records that
metering rejects one by one are logged and counted (metering keeps them in its dead-letter
table); a whole batch refused as malformed (400/422) is written to ``dead-letter.jsonl`` in
the spool directory so it never blocks the ones behind it.

The wire and the HTTP call are the kernel's metering client
(:mod:`infermeter.kernel.metering_client`), called with ``attempts=1``: the spool is the retry
loop, waiting the kernel's ``Backoff`` (exponential, with jitter, so shippers that lost
metering at the same moment do not retry in lockstep) between tries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter

from infermeter.kernel.dependency_auth import AUTH_STATUSES, DependencyAuth
from infermeter.kernel.errors import (
    MeteringClientError,
    MeteringRefused,
    MeteringReplyError,
    SpoolWriteError,
)
from infermeter.kernel.metering_client import Backoff, MeteringClient
from infermeter.kernel.metering_wire import IngestReply
from infermeter.kernel.spool import Spool

log = logging.getLogger(__name__)
# Refusals that are not the batch's fault (token, route, conflict): keep it spooled and retry.
# Transient statuses (5xx, 408, 425, 429) arrive as MeteringUnavailable.
_KEEP_SPOOLED_4XX = frozenset({401, 403, 404, 409})


class ShipperMetrics:
    """Counters shared by a service's shippers (label ``kind`` = usage | gpu_samples)."""

    def __init__(self, registry: CollectorRegistry, service: str = "collector") -> None:
        self.shipped = Counter(
            f"infermeter_{service}_shipped_records",
            "Payloads acknowledged by metering",
            ["kind"],
            registry=registry,
        )
        self.failures = Counter(
            f"infermeter_{service}_shipping_failures",
            "Failed attempts to ship a batch to metering (retried from the spool)",
            ["kind"],
            registry=registry,
        )
        self.rejected = Counter(
            f"infermeter_{service}_rejected_records",
            "Payloads metering refused as invalid (kept in its dead-letter table or ours)",
            ["kind"],
            registry=registry,
        )


class Shipper:
    """Drain ``spool`` to metering's ingest ``path`` through ``client``."""

    def __init__(
        self,
        spool: Spool,
        client: MeteringClient,
        path: str,
        kind: str,
        metrics: ShipperMetrics,
        *,
        batch_size: int = 500,
        batch_interval_s: float = 1.0,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        timeout_s: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        now: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
        auth: DependencyAuth | None = None,
        token_setting: str = "the metering ingest token",
        dead_letter_max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.spool = spool
        self.client = client
        self.path = path
        self.url = client.url(path)
        self.kind = kind
        self.batch_size = batch_size
        self.batch_interval_s = batch_interval_s
        self.backoff = Backoff(initial_s=retry_initial_s, max_s=retry_max_s)
        self.timeout_s = timeout_s
        self._sleep = sleep
        self._now = now
        self._random = random
        self._wake = asyncio.Event()
        self._shipped = metrics.shipped.labels(kind)
        self._failures = metrics.failures.labels(kind)
        self._rejected = metrics.rejected.labels(kind)
        self._auth = auth
        self._token_setting = token_setting
        self.last_error: str = ""
        self.ack_error: str = ""  # the disk refused the ack file
        self.dead_letter_max_bytes = dead_letter_max_bytes

    def notify(self) -> None:
        """New payloads are in the spool."""
        self._wake.set()

    async def run(self) -> None:
        """Ship forever (until cancelled)."""
        while True:
            if self.spool.pending == 0:
                self._wake.clear()
                await self._wake.wait()
            deadline = self._now() + self.batch_interval_s
            while self.spool.pending < self.batch_size and self._now() < deadline:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), deadline - self._now())
                except TimeoutError:
                    break
            await self.drain()

    async def drain(self) -> bool:
        """Ship until the spool is empty; True when it is, False after a failed attempt."""
        retry = 0
        while self.spool.pending > 0:
            payloads, pos = await asyncio.to_thread(self.spool.peek, self.batch_size)
            if not payloads:
                return True
            try:
                await self._post(payloads)
            except MeteringClientError as exc:
                self._failures.inc()
                if self.last_error != str(exc):
                    log.warning("shipping %s to %s failed: %s (retrying)", self.kind, self.url, exc)
                self.last_error = str(exc)
                await self._sleep(self.backoff.delay(retry, self._random))
                retry += 1
                continue
            try:
                await asyncio.to_thread(self.spool.ack, pos, len(payloads))
            except SpoolWriteError as exc:
                # delivered but not marked: sent again later, metering de-duplicates
                self.ack_error = str(exc)
                log.error("%s (retrying)", exc)
                await self._sleep(self.backoff.delay(retry, self._random))
                retry += 1
                continue
            self.ack_error = ""
            self._shipped.inc(len(payloads))
            if self.last_error:
                log.info("shipping %s to %s recovered", self.kind, self.url)
            self.last_error = ""
            retry = 0
        return True

    async def _post(self, payloads: list[bytes]) -> None:
        """Deliver one batch; raises a :class:`MeteringClientError` when it stays spooled."""
        try:
            reply = await self.client.post_batch(
                self.path, payloads, timeout_s=self.timeout_s, attempts=1
            )
        except MeteringReplyError as exc:
            # a 2xx: the batch is stored, only the counts are unreadable
            log.warning("metering stored a %s batch; its reply is unreadable: %s", self.kind, exc)
            return
        except MeteringRefused as exc:
            if exc.status in AUTH_STATUSES and self._auth is not None:
                self._auth.refused("metering", exc.status, self._token_setting)
            if exc.status in _KEEP_SPOOLED_4XX:
                raise
            # the batch as a whole is malformed: set it aside so it never blocks the rest
            self._rejected.inc(len(payloads))
            await asyncio.to_thread(self._dead_letter, payloads, str(exc))
            return
        if self._auth is not None:
            self._auth.accepted("metering")
        self._count_rejected(reply)

    def _count_rejected(self, reply: IngestReply) -> None:
        if reply.rejected:
            self._rejected.inc(len(reply.rejected))
            log.error(
                "metering rejected %d %s payloads: %s",
                len(reply.rejected),
                self.kind,
                "; ".join(str(r) for r in reply.rejected[:5]),
            )

    def _dead_letter(self, payloads: list[bytes], reason: str) -> None:
        log.error("metering refused a %s batch of %d: %s", self.kind, len(payloads), reason)
        path = self.spool.dir / "dead-letter.jsonl"
        with contextlib.suppress(FileNotFoundError):  # no dead letter yet
            if path.stat().st_size >= self.dead_letter_max_bytes:
                path.replace(path.with_name(path.name + ".1"))  # one older file is kept
        with open(path, "ab") as fh:
            for p in payloads:
                fh.write(p + b"\n")
