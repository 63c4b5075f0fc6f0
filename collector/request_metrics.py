"""Prometheus series for proxied requests, updated off the request path from finished records.

Labels are bound once per (tenant, model, status) and the children cached, so recording a
request is a handful of ``inc``/``observe`` calls. A cardinality guard caps the distinct
tenant label values; tenants beyond the cap are reported as ``other`` (and counted).
Per-request facts (request ids, exact timings) belong to usage records, never to labels.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from infermeter.kernel import vllm_wire
from infermeter.kernel.records import UsageRecord

# vLLM 0.32's own histogram buckets (one definition, with the simulator's families), so
# the collector's panels compare with the engine's.
TTFT_BUCKETS = vllm_wire.TTFT_BUCKETS
ITL_BUCKETS = vllm_wire.ITL_BUCKETS
E2E_BUCKETS = vllm_wire.REQUEST_SECONDS_BUCKETS
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip
OTHER_LABEL = "other"  # the label value of every tenant or model past its cap
RATE_WINDOW_S = 10.0


class LabelGuard:
    """Caps the distinct values of a client-chosen label (tenant, model) at ``limit``: the
    first seen are kept, the rest become ``other`` (and are counted)."""

    def __init__(self, limit: int, on_overflow: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._on_overflow = on_overflow

    def label(self, tenant: str) -> str:
        if tenant in self._seen:
            return tenant
        if len(self._seen) < self.limit:
            self._seen.add(tenant)
            return tenant
        if self._on_overflow is not None:
            self._on_overflow()
        return OTHER_LABEL


class _TokenRates(Collector):
    """tokens/s per model over a sliding window, computed at scrape time."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._events: dict[str, deque[tuple[float, int, int]]] = {}

    def add(self, model: str, prompt: int, completion: int) -> None:
        self._events.setdefault(model, deque()).append((self._now(), prompt, completion))

    def rates(self) -> dict[str, tuple[float, float]]:
        cutoff = self._now() - RATE_WINDOW_S
        out: dict[str, tuple[float, float]] = {}
        for model, events in self._events.items():
            while events and events[0][0] < cutoff:
                events.popleft()
            prompt = sum(e[1] for e in events)
            completion = sum(e[2] for e in events)
            out[model] = (prompt / RATE_WINDOW_S, completion / RATE_WINDOW_S)
        return out

    def collect(self) -> Iterator[GaugeMetricFamily]:
        prompt = GaugeMetricFamily(
            "infermeter_prompt_tokens_per_second",
            f"Prompt tokens per second through this collector over the last {RATE_WINDOW_S:g} s",
            labels=["model"],
        )
        generation = GaugeMetricFamily(
            "infermeter_generation_tokens_per_second",
            f"Completion tokens per second through this collector over the last "
            f"{RATE_WINDOW_S:g} s",
            labels=["model"],
        )
        for model, (p, c) in sorted(self.rates().items()):
            prompt.add_metric([model], p)
            generation.add_metric([model], c)
        yield prompt
        yield generation


class FastHistogram(Collector):
    """A histogram bucketed with ``bisect`` (one label at most), for the background consumer.

    client_python's ``observe`` takes a lock and walks the buckets in Python per value; a
    request brings one TTFT, one latency and dozens of inter-token gaps, so this is cheaper.
    Only the record consumer task writes to it; scrapes read a consistent-enough snapshot.
    """

    def __init__(
        self, name: str, documentation: str, buckets: tuple[float, ...], label: str | None
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.bounds = list(buckets)
        self._data: dict[str, tuple[list[int], list[float]]] = {}

    def _entry(self, key: str) -> tuple[list[int], list[float]]:
        entry = self._data.get(key)
        if entry is None:
            entry = self._data[key] = ([0] * (len(self.bounds) + 1), [0.0])
        return entry

    def observe(self, value: float, key: str = "") -> None:
        counts, total = self._entry(key)
        counts[bisect_left(self.bounds, value)] += 1
        total[0] += value

    def observe_many(self, values: list[float], key: str = "") -> None:
        counts, total = self._entry(key)
        bounds = self.bounds
        for value in values:
            counts[bisect_left(bounds, value)] += 1
        total[0] += sum(values)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        labels = [self.label] if self.label else []
        family = HistogramMetricFamily(self.name, self.documentation, labels=labels)
        for key, (counts, total) in sorted(self._data.items()):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip([*self.bounds, float("inf")], counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), float(cumulative)))
            family.add_metric([key] if self.label else [], buckets, total[0])
        yield family


class RequestMetrics:
    """Request, token, latency and overhead series, plus the collector's own health."""

    def __init__(
        self,
        registry: CollectorRegistry,
        tenant_limit: int = 100,
        now: Callable[[], float] = time.monotonic,
        model_limit: int = 100,
    ) -> None:
        r = registry
        self.requests = Counter(
            "infermeter_requests",
            "Inference requests through the collector by tenant, model and status",
            ["tenant", "model", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "infermeter_prompt_tokens",
            "Prompt tokens (engine-reported) by tenant and model",
            ["tenant", "model"],
            registry=r,
        )
        self.cached_prompt_tokens = Counter(
            "infermeter_cached_prompt_tokens",
            "Prompt tokens served from the prefix cache by tenant and model",
            ["tenant", "model"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "infermeter_completion_tokens",
            "Completion tokens by tenant and model (for aborts: tokens streamed before it)",
            ["tenant", "model"],
            registry=r,
        )
        self.ttft = FastHistogram(
            "infermeter_time_to_first_token_seconds",
            "Time to first token seen by the collector (streamed requests)",
            TTFT_BUCKETS,
            "model",
        )
        self.itl = FastHistogram(
            "infermeter_inter_token_latency_seconds",
            "Gaps between streamed tokens seen by the collector",
            ITL_BUCKETS,
            "model",
        )
        self.e2e = FastHistogram(
            "infermeter_e2e_request_latency_seconds",
            "End-to-end request latency seen by the collector",
            E2E_BUCKETS,
            "model",
        )
        self.overhead = FastHistogram(
            "infermeter_collector_overhead_seconds",
            "Time the collector itself added to a request (parsing, forwarding, accounting)",
            OVERHEAD_BUCKETS,
            None,
        )
        for histogram in (self.ttft, self.itl, self.e2e, self.overhead):
            r.register(histogram)
        self.untrusted_tenant = Counter(
            "infermeter_collector_untrusted_tenant_headers",
            "Requests whose tenant header lacked the gateway secret (header ignored)",
            registry=r,
        )
        self.client_request_ids = Counter(
            "infermeter_collector_client_request_ids",
            "Requests whose x-infermeter-request-id came without the gateway secret (kept as "
            "the client_request_id tag; the record got an id of the collector's)",
            registry=r,
        )
        self.tenant_overflow = Counter(
            "infermeter_collector_tenant_label_overflow",
            "Records whose tenant label became 'other' because of the cardinality cap",
            registry=r,
        )
        self.upstream_errors = Counter(
            "infermeter_collector_upstream_errors",
            "Upstream failures by kind (connect, timeout, midstream)",
            ["kind"],
            registry=r,
        )
        self.records_dropped = Counter(
            "infermeter_collector_records_dropped",
            "Usage records that could not be kept, by reason (an alert should fire on any)",
            ["reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "infermeter_collector_record_queue_depth",
            "Finished records waiting for the background consumer",
            registry=r,
        )
        self.records_held = Gauge(
            "infermeter_collector_records_held",
            "Usage records held in memory because the disk refused the spool write (ENOSPC, "
            "EIO, read-only); written as soon as it takes them",
            registry=r,
        )
        self.rates = _TokenRates(now)
        r.register(self.rates)
        self.model_overflow = Counter(
            "infermeter_collector_model_label_overflow",
            "Records whose model label became 'other' because of the cardinality cap (the "
            "model is client-chosen: the usage record keeps the name)",
            registry=r,
        )
        self.guard = LabelGuard(tenant_limit, self.tenant_overflow.inc)
        self.models = LabelGuard(model_limit, self.model_overflow.inc)
        self._children: dict[tuple[str, str, str], tuple[object, ...]] = {}
        self.totals: dict[str, list[int]] = {}  # model -> [prompt, completion], all tenants

    def observe(self, rec: UsageRecord, token_gaps: list[float]) -> None:
        """Account one finished record (called by the background consumer)."""
        tenant = self.guard.label(rec.tenant)
        model = self.models.label(rec.model)
        key = (tenant, model, rec.status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(tenant, model, rec.status),
                self.prompt_tokens.labels(tenant, model),
                self.cached_prompt_tokens.labels(tenant, model),
                self.completion_tokens.labels(tenant, model),
            )
            self._children[key] = children
        req, prompt, cached, completion = children
        req.inc()  # type: ignore[attr-defined]
        if rec.prompt_tokens:
            prompt.inc(rec.prompt_tokens)  # type: ignore[attr-defined]
        if rec.cached_prompt_tokens:
            cached.inc(rec.cached_prompt_tokens)  # type: ignore[attr-defined]
        if rec.completion_tokens:
            completion.inc(rec.completion_tokens)  # type: ignore[attr-defined]
        if rec.ttft_s is not None:
            self.ttft.observe(rec.ttft_s, model)
        if token_gaps:
            self.itl.observe_many(token_gaps, model)
        if rec.e2e_s is not None:
            self.e2e.observe(rec.e2e_s, model)
        self.rates.add(model, rec.prompt_tokens, rec.completion_tokens)
        totals = self.totals.setdefault(model, [0, 0])
        totals[0] += rec.prompt_tokens
        totals[1] += rec.completion_tokens
