"""Wiring of the metering service: one store, the ingestor, the allocator, reports, budgets,
and the background loop that allocates closed windows and checks budgets."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from infermeter.kernel.price_catalog import Catalog, load_catalog
from infermeter.metering.allocation import AllocationResult, Allocator, epoch_us
from infermeter.metering.budgets import Budgets
from infermeter.metering.context_weights import ContextWeightBook
from infermeter.metering.errors import MeteringError
from infermeter.metering.ingest import Ingestor
from infermeter.metering.reports import Reports
from infermeter.metering.settings import MeteringSettings
from infermeter.metering.store import Store, open_store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AllocationState:
    runs: int = 0
    failures: int = 0
    last_duration_s: float = 0.0
    last_unpriced: int = 0
    allocated_until: float = 0.0
    last_error: str = ""


class MeteringService:
    """Everything ``infermeter metering serve`` runs, built from settings."""

    def __init__(
        self,
        settings: MeteringSettings,
        *,
        store: Store | None = None,
        catalog: Catalog | None = None,
        now: Callable[[], float] = time.time,
        post: Callable[[str, dict[str, Any]], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.now = now
        self.catalog = catalog or load_catalog(settings.catalog or None)
        self.store = store or open_store(settings.storage_uri())
        self.ingestor = Ingestor(self.store, now)
        context = ContextWeightBook(settings.models)
        self.allocator = Allocator(
            self.store,
            self.catalog,
            window_s=settings.window_s,
            replicas=settings.replicas,
            price_energy=settings.price_energy,
            context=context,
            max_range_days=settings.max_allocate_days,
            now=now,
        )
        self.allocator.register_replicas()
        self.reports = Reports(
            self.store,
            self.catalog,
            share_idle=settings.share_idle,
            now=now,
            window_s=settings.window_s,
            context=context,
        )
        self.budgets = Budgets(
            self.store,
            self.reports,
            settings.budgets,
            webhook=settings.alert_webhook,
            now=now,
            post=post,
        )
        self.allocation_state = AllocationState()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def allocate(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> AllocationResult:
        """Allocate ``[since, until)``; by default the closed windows not yet final (from the
        watermark, or ``reallocate_s`` back, up to now minus the lag). The allocator clamps
        every range to the closed windows before now: the open window is allocated by the
        first run after it closes (the loop starts again at the watermark)."""
        now = self.now()
        if until is None:
            until = _naive(now - self.settings.allocation_lag_s)
        if since is None:
            since = _naive(now - self.settings.allocation_lag_s - self.settings.reallocate_s)
            last = self.allocation_state.allocated_until
            if last:
                since = min(since, _naive(last))
            else:
                since = min(since, self._first_unallocated() or since)
        with self._lock:
            try:
                result = self.allocator.run(since, until)
            except MeteringError as exc:
                self.allocation_state.failures += 1
                self.allocation_state.last_error = str(exc)
                raise
            state = self.allocation_state
            state.runs += 1
            state.last_duration_s = result.duration_s
            state.last_unpriced = result.unpriced_requests
            end = epoch_us(result.range_end) / 1e6
            state.allocated_until = max(state.allocated_until, end)
        return result

    def _first_unallocated(self) -> datetime | None:
        """Where allocation must start after a restart: the end of the last allocated window,
        or the oldest record when nothing was allocated yet."""
        cur = self.store.cursor()
        try:
            row = cur.execute("SELECT max(window_start) FROM replica_window").fetchone()
            if row and row[0] is not None:
                last: datetime = row[0]
                return last
            row = cur.execute(
                "SELECT least((SELECT min(started_at) FROM usage), "
                "(SELECT min(ts) FROM gpu_samples))"
            ).fetchone()
        finally:
            cur.close()
        return row[0] if row and row[0] is not None else None

    def tick(self) -> None:
        """One step of the background loop: allocate, then check budgets."""
        try:
            self.allocate()
            self.budgets.check()
        except MeteringError as exc:
            log.error("metering loop: %s", exc)

    def start(self) -> None:
        """Start the background loop (no-op when ``allocate_every_s`` is 0)."""
        if self.settings.allocate_every_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="metering-loop", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.allocate_every_s):
            self.tick()

    def stop(self) -> None:
        """Stop the loop and close the store."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        self.store.close()


def _naive(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC).replace(tzinfo=None) + timedelta(0)
