"""Prometheus exposition of the throttle, computed at scrape time from live state.

Families (all ``infermeter_throttle_*``): decisions and settles by outcome, storage health
(``storage_up`` 0 while deciding locally), policy version and rejections, and per pool the
autoscale answer (``desired_replicas``, ``current_replicas``), ``pool_pressure`` and the
per-replica mean of each engine signal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infermeter.throttle.metering_rates import MeteringRates
from infermeter.throttle.policy_source import PolicyManager
from infermeter.throttle.service import Throttle
from infermeter.throttle.signals import PoolMonitor
from infermeter.throttle.storage.failover import FailoverStorage

P = "infermeter_throttle_"


class ThrottleCollector(Collector):
    """Yields fresh metric families on each scrape."""

    def __init__(
        self,
        throttle: Throttle,
        monitor: PoolMonitor,
        policies: PolicyManager,
        storage: Any,
        rates: MeteringRates | None,
    ) -> None:
        self._throttle = throttle
        self._monitor = monitor
        self._policies = policies
        self._storage = storage
        self._rates = rates

    def collect(self) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            P + "decisions",
            "Admission decisions by outcome and refusal reason.",
            labels=["decision", "reason"],
        )
        for (decision, reason), n in sorted(self._throttle.decisions.items()):
            decisions.add_metric([decision, reason or "none"], n)
        yield decisions
        settles = CounterMetricFamily(
            P + "settles", "Settled reservations by request status.", labels=["status"]
        )
        for status, n in sorted(self._throttle.settles.items()):
            settles.add_metric([status], n)
        yield settles

        storage = self._storage
        degraded = storage.capabilities.degraded
        up = GaugeMetricFamily(
            P + "storage_up",
            "1 when the state backend answers, 0 while deciding locally.",
            labels=["backend"],
        )
        up.add_metric([storage.name], 0.0 if degraded else 1.0)
        yield up
        failures = CounterMetricFamily(
            P + "storage_failures", "State backend operations that failed as unreachable."
        )
        local = CounterMetricFamily(
            P + "local_decisions", "Operations decided from local state (backend unreachable)."
        )
        recoveries = CounterMetricFamily(
            P + "storage_recoveries", "Times the state backend came back after an outage."
        )
        if isinstance(storage, FailoverStorage):
            failures.add_metric([], storage.failures)
            local.add_metric([], storage.local_decisions)
            recoveries.add_metric([], storage.recoveries)
        else:
            for family in (failures, local, recoveries):
                family.add_metric([], 0)
        yield failures
        yield local
        yield recoveries

        yield GaugeMetricFamily(
            P + "policy_version",
            "Version of the policy in force.",
            value=self._policies.current.version,
        )
        yield CounterMetricFamily(
            P + "policy_rejections",
            "Policy documents rejected as invalid.",
            value=self._policies.rejected,
        )
        rates_ok = 1.0 if self._rates is not None and self._rates.ok else 0.0
        yield GaugeMetricFamily(
            P + "metering_rates_ok",
            "1 when prices come from metering, 0 on policy prices.",
            value=rates_ok,
        )

        desired = GaugeMetricFamily(
            P + "desired_replicas",
            "Recommended replicas per pool (HPA rule, stabilised).",
            labels=["pool", "driver"],
        )
        current = GaugeMetricFamily(
            P + "current_replicas", "Replicas reporting fresh engine signals.", labels=["pool"]
        )
        pressure = GaugeMetricFamily(
            P + "pool_pressure",
            "1 while the pool is saturated (fair share enforced).",
            labels=["pool"],
        )
        signal = GaugeMetricFamily(
            P + "pool_signal", "Per-replica mean of an engine signal.", labels=["pool", "signal"]
        )
        for name, state in sorted(self._monitor.states.items()):
            current.add_metric([name], state.replicas)
            pressure.add_metric([name], 1.0 if state.pressure else 0.0)
            if state.recommendation is not None:
                rec = state.recommendation
                desired.add_metric([name, rec.driver], rec.desired)
            for sig, value in sorted(state.means.items()):
                signal.add_metric([name, sig], value)
        yield desired
        yield current
        yield pressure
        yield signal
        yield CounterMetricFamily(
            P + "signals_refused",
            "Pushed signal samples refused (clock skew beyond max_signal_skew_s, caps).",
            value=self._monitor.refused,
        )
        yield CounterMetricFamily(
            P + "pools_evicted",
            "Pools forgotten after evict_after_s without a fresh signal.",
            value=self._monitor.evicted,
        )
        yield CounterMetricFamily(
            P + "tenants_evicted",
            "Idle tenants' state forgotten after tenant_idle_s (it could change no decision).",
            value=self._throttle.tenants_evicted,
        )
