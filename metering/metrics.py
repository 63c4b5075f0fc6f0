"""Metering's own health on ``/metrics``: ingest counters, database size, allocation lag and
budget gauges, computed at scrape time by a custom collector (names lint-clean for promtool)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from infermeter.metering.service import MeteringService

P = "infermeter_metering_"


class MeteringCollector(Collector):
    """Yields fresh metric families from the service's state on every scrape."""

    def __init__(self, service: MeteringService, now: Callable[[], float]) -> None:
        self.service = service
        self.now = now

    def collect(self) -> Iterator[Metric]:
        stats = self.service.ingestor.stats
        counters = {
            "records_received": ("Records received in ingest batches.", "received"),
            "records_stored": ("Records stored (new request ids / sample keys).", "stored"),
            "records_duplicate": ("Records ignored because their id was stored.", "duplicate"),
            "records_conflict": (
                "Duplicate ids whose content differs from the stored record (another request "
                "under a reused id: dead-lettered, never billed twice or silently dropped).",
                "conflict",
            ),
            "records_dead_lettered": (
                "Records rejected into the dead-letter table.",
                "dead_lettered",
            ),
            "ingest_batches": ("Ingest batches committed.", "batches"),
            "ingest_batches_failed": ("Ingest batches refused or not stored.", "batches_failed"),
            "ingest_fast_path_batches": (
                "Batches validated by the vectorised path.",
                "fast_path_batches",
            ),
            "ingest_bytes": ("Bytes of ingest bodies received.", "bytes"),
        }
        with stats.lock:
            snapshot = {kind: c for kind, c in stats.kinds.items()}
            for name, (doc, attr) in counters.items():
                family = CounterMetricFamily(P + name, doc, labels=["kind"])
                for kind, c in snapshot.items():
                    family.add_metric([kind], float(getattr(c, attr)))
                yield family
        yield GaugeMetricFamily(
            P + "db_size_bytes",
            "Size of the DuckDB file and its WAL.",
            self.service.store.size_bytes(),
        )
        alloc = self.service.allocation_state
        yield CounterMetricFamily(P + "allocation_runs", "Allocation runs completed.", alloc.runs)
        yield CounterMetricFamily(
            P + "allocation_failures", "Allocation runs that failed.", alloc.failures
        )
        yield GaugeMetricFamily(
            P + "allocation_last_duration_seconds",
            "Duration of the last allocation run.",
            alloc.last_duration_s,
        )
        yield GaugeMetricFamily(
            P + "allocation_unpriced_requests",
            "Requests in the last run on replicas with no known price.",
            alloc.last_unpriced,
        )
        until = alloc.allocated_until
        yield GaugeMetricFamily(
            P + "allocation_lag_seconds",
            "Seconds between now and the end of the last allocated window.",
            max(self.now() - until, 0.0) if until else 0.0,
        )
        budgets = self.service.budgets
        exceed = GaugeMetricFamily(
            P + "budget_will_exceed",
            "1 when the tenant's spend is projected to exceed its budget this period.",
            labels=["tenant", "period"],
        )
        projected = GaugeMetricFamily(
            P + "budget_projected_usd",
            "Projected spend at the end of the period.",
            labels=["tenant", "period"],
        )
        limit = GaugeMetricFamily(
            P + "budget_limit_usd", "Budget limit for the period.", labels=["tenant", "period"]
        )
        spent = GaugeMetricFamily(
            P + "budget_spent_usd", "Spend so far in the period.", labels=["tenant", "period"]
        )
        for (tenant, period), state in sorted(budgets.last.items()):
            exceed.add_metric([tenant, period], 1.0 if state.will_exceed else 0.0)
            projected.add_metric([tenant, period], state.projected_usd)
            limit.add_metric([tenant, period], state.limit_usd)
            spent.add_metric([tenant, period], state.spent_usd)
        yield from (exceed, projected, limit, spent)
        alerts = CounterMetricFamily(
            P + "budget_alerts", "Budget alerts by delivery result.", labels=["result"]
        )
        alerts.add_metric(["delivered"], budgets.alerts_sent)
        alerts.add_metric(["failed"], budgets.alerts_failed)
        yield alerts
