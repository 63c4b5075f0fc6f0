"""Batches into a spool off the event loop, and a bounded memory backlog for a refusing disk.

:class:`SpoolWriter` appends each batch to a :class:`~infermeter.kernel.spool.Spool` in a
worker thread (one ``fsync``). When the disk refuses the write (ENOSPC, EIO, a read-only
remount: :class:`~infermeter.kernel.errors.SpoolWriteError`) the batch is **held** in memory
(``held``; beyond ``max_held`` the oldest are dropped and reported as ``spool_unwritable``),
``error`` says why (callers turn readiness red with it), and every later write, or a plain
:meth:`SpoolWriter.retry`, tries the held payloads first, in order, so nothing is lost while
the backlog has room and the disk recovers by itself. A spool past its size limit
(:class:`~infermeter.kernel.errors.SpoolError`) refuses the batch for good: it is reported as
``spool_full``. After each successful write ``on_written`` wakes the shipper.

The collector's record pipeline and the gateway's usage records both write through it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence

from infermeter.kernel.errors import SpoolError, SpoolWriteError
from infermeter.kernel.spool import Spool

log = logging.getLogger(__name__)


class SpoolWriter:
    """Append batches to ``spool``; hold at most ``max_held`` payloads the disk refused."""

    def __init__(
        self,
        spool: Spool,
        *,
        max_held: int,
        on_written: Callable[[], None] | None = None,
        on_dropped: Callable[[str, int], None] | None = None,
    ) -> None:
        self.spool = spool
        self.max_held = max_held
        self._on_written = on_written
        self._on_dropped = on_dropped
        self._held: deque[bytes] = deque()
        self.error = ""  # the disk's refusal while payloads are held, else ""

    @property
    def held(self) -> int:
        """Payloads kept in memory because the disk refused them."""
        return len(self._held)

    async def write(self, lines: Sequence[bytes]) -> bool:
        """Append the held payloads and ``lines``; False when the disk refused (now held)."""
        batch = [*self._held, *lines]
        if not batch:
            return True
        try:
            await asyncio.to_thread(self.spool.append, batch)
        except SpoolWriteError as exc:
            if not self.error:
                log.error("%s: holding payloads in memory until the disk takes them", exc)
            self.error = str(exc)
            self._held.extend(lines)
            overflow = len(self._held) - self.max_held
            if overflow > 0:
                for _ in range(overflow):
                    self._held.popleft()
                self._dropped("spool_unwritable", overflow)
            return False
        except SpoolError as exc:
            self._dropped("spool_full", len(batch))
            log.error("%s: %d payloads not kept", exc, len(batch))
            self._held.clear()
            return True
        if self.error:
            log.warning("spool writable again: %d held payloads written", len(self._held))
        self.error = ""
        self._held.clear()
        if self._on_written is not None:
            self._on_written()
        return True

    async def retry(self) -> bool:
        """Try the held payloads again (nothing to do when none are held)."""
        return await self.write(())

    async def wait(self, wake: asyncio.Event, retry_s: float) -> None:
        """Wait until ``wake`` is set (and clear it), retrying the held payloads every
        ``retry_s`` meanwhile: the loop of a task that feeds this writer."""
        while self._held:
            try:
                await asyncio.wait_for(wake.wait(), retry_s)
                break
            except TimeoutError:
                await self.retry()
        else:
            await wake.wait()
        wake.clear()

    def _dropped(self, reason: str, count: int) -> None:
        if self._on_dropped is not None:
            self._on_dropped(reason, count)
