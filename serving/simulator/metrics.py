"""vLLM 0.32's Prometheus families, with the same names, types, labels, help and buckets.

Everything lives in a private ``CollectorRegistry``; labels are bound once here so the
engine's hot path only calls ``inc``/``observe``/``set``. Families are registered in the
order vLLM exposes them, after the default process/platform/GC collectors and before the
HTTP families of prometheus-fastapi-instrumentator that vLLM's API server adds. The one
project-own family is ``infermeter_simulator_info``, which says this is a simulator.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from infermeter.kernel.vllm_wire import (
    CONTENT_TYPE,
    FINISHED_REASONS,
    HTTP_HIGHR_BUCKETS,
    ITERATION_BUCKETS,
    ITL_BUCKETS,
    REQUEST_PHASES,
    REQUEST_SECONDS_BUCKETS,
    TOKEN_BUCKETS,
    TTFT_BUCKETS,
)

__all__ = ["CONTENT_TYPE", "ITL_BUCKETS", "VllmMetrics", "observe_many"]

MFU_HELP = "(for Model Flops Utilization calculations)."
_HTTP_SIZE_HELP = (
    "Content length of {} by handler. Only value of header is respected. Otherwise ignored. "
    "No percentile calculated. "
)


class VllmMetrics:
    """The metric families of one simulated vLLM engine (``engine="0"``)."""

    def __init__(
        self,
        model_name: str,
        *,
        cache_config: Mapping[str, str],
        simulator_labels: Mapping[str, str],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        GCCollector(registry=reg)
        PlatformCollector(registry=reg)
        ProcessCollector(registry=reg)
        base = {"model_name": model_name, "engine": "0"}
        names = ["model_name", "engine"]

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=reg).labels(**base)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=reg).labels(**base)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=reg).labels(**base)

        self.flops = counter(
            "vllm:estimated_flops_per_gpu",
            f"Estimated number of floating point operations per GPU {MFU_HELP}",
        )
        self.read_bytes = counter(
            "vllm:estimated_read_bytes_per_gpu",
            f"Estimated number of bytes read from memory per GPU {MFU_HELP}",
        )
        self.write_bytes = counter(
            "vllm:estimated_write_bytes_per_gpu",
            f"Estimated number of bytes written to memory per GPU {MFU_HELP}",
        )
        self.running = gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        )
        self.waiting = gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        )
        by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
            "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, "
            "KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
            [*names, "reason"],
            registry=reg,
        )
        self.waiting_capacity = by_reason.labels(**base, reason="capacity")
        by_reason.labels(**base, reason="deferred").set(0)
        sleep = Gauge(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is "
            "awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep "
            "level 2.",
            [*names, "sleep_state"],
            registry=reg,
        )
        for state, value in (("awake", 1), ("weights_offloaded", 0), ("discard_all", 0)):
            sleep.labels(**base, sleep_state=state).set(value)
        self.kv_usage = gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        )
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
        )
        self.prefix_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        counter(
            "vllm:external_prefix_cache_queries",
            "External prefix cache queries from KV connector cross-instance cache sharing, in "
            "terms of number of queried tokens.",
        )
        counter(
            "vllm:external_prefix_cache_hits",
            "External prefix cache hits from KV connector cross-instance cache sharing, in "
            "terms of number of cached tokens.",
        )
        counter(
            "vllm:mm_cache_queries",
            "Multi-modal cache queries, in terms of number of queried items.",
        )
        counter("vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items.")
        self.preemptions = counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        by_source = Counter(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            [*names, "source"],
            registry=reg,
        )
        self.prompt_tokens_local = by_source.labels(**base, source="local_compute")
        self.prompt_tokens_cache_hit = by_source.labels(**base, source="local_cache_hit")
        by_source.labels(**base, source="external_kv_transfer")
        self.prompt_tokens_cached = counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external)."
        )
        cached_by_source = Counter(
            "vllm:prompt_tokens_cached_by_source",
            "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), "
            "host (offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or "
            "external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + "
            "vllm:external_prefix_cache_hits.",
            [*names, "source"],
            registry=reg,
        )
        self.prompt_tokens_cached_device = cached_by_source.labels(**base, source="device")
        for source in ("host", "p2p", "disk", "external_unspecified"):
            cached_by_source.labels(**base, source=source)
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=reg,
        )
        self.success = {r: success.labels(**base, finished_reason=r) for r in FINISHED_REASONS}
        rejections = Counter(
            "vllm:admission_rejections",
            "Number of admission attempts rejected by a queue limit, by reason.",
            ["model_name", "reason"],
            registry=reg,
        )
        for reason in ("max_num_queued_reqs", "max_num_queued_tokens"):
            rejections.labels(model_name=model_name, reason=reason)
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", TOKEN_BUCKETS
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            TOKEN_BUCKETS,
        )
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            ITERATION_BUCKETS,
        )
        self.max_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            TOKEN_BUCKETS,
        )
        self.params_n = histogram(
            "vllm:request_params_n", "Histogram of the n request parameter.", (1, 2, 5, 10, 20)
        )
        self.params_max_tokens = histogram(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            TOKEN_BUCKETS,
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        )
        self.tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        phase_help = {
            key: f"time spent in {when} phase for request."
            for key, (_, when) in REQUEST_PHASES.items()
        }
        phase_help["e2e"] = "e2e request latency in seconds."
        made = {
            key: histogram(
                f"vllm:{name}", f"Histogram of {phase_help[key]}", REQUEST_SECONDS_BUCKETS
            )
            for key, (name, _) in REQUEST_PHASES.items()
        }
        self.e2e, self.queue = made["e2e"], made["queue"]
        self.inference, self.prefill, self.decode = (
            made["inference"],
            made["prefill"],
            made["decode"],
        )
        self.request_preemptions = histogram(
            "vllm:request_num_preemptions",
            "Histogram of the number of times a request was preempted.",
            (1, 2, 3, 4, 5, 10, 20),
        )
        self.prefill_kv_tokens = histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            TOKEN_BUCKETS,
        )
        info = Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            sorted({*cache_config, "engine"}),
            registry=reg,
        )
        info.labels(**{**cache_config, "engine": "0"}).set(1)
        self.http = HttpMetrics(reg)
        simulator = Gauge(
            "infermeter_simulator_info",
            "Marks an infermeter simulator (not a real vLLM) and the profiles it simulates.",
            sorted(simulator_labels),
            registry=reg,
        )
        simulator.labels(**simulator_labels).set(1)

    def cache_hit_tokens(self, tokens: int) -> None:
        """Prompt tokens served from the (device) prefix cache."""
        self.prefix_hits.inc(tokens)
        self.prompt_tokens_cache_hit.inc(tokens)
        self.prompt_tokens_cached.inc(tokens)
        self.prompt_tokens_cached_device.inc(tokens)

    def finished(self, reason: str) -> Counter:
        """The request_success counter child for ``reason``."""
        return self.success[reason]


def observe_many(histogram: Histogram, value: float, count: int) -> None:
    """Record ``count`` observations of ``value`` at once.

    Same result as ``count`` calls of ``observe`` (prometheus_client keeps per-bucket counts
    and accumulates them at scrape time), at the cost of one: the engine observes the same
    inter-token latency for every sequence of a decode step.
    """
    histogram._sum.inc(value * count)
    for i, bound in enumerate(histogram._upper_bounds):
        if value <= bound:
            histogram._buckets[i].inc(count)
            return


class HttpMetrics:
    """prometheus-fastapi-instrumentator's families, as vLLM's API server exposes them."""

    def __init__(self, reg: CollectorRegistry) -> None:
        self.requests = Counter(
            "http_requests",
            "Total number of requests by method, status and handler.",
            ["method", "status", "handler"],
            registry=reg,
        )
        self.request_size = Summary(
            "http_request_size_bytes",
            _HTTP_SIZE_HELP.format("incoming requests"),
            ["handler"],
            registry=reg,
        )
        self.response_size = Summary(
            "http_response_size_bytes",
            _HTTP_SIZE_HELP.format("outgoing responses"),
            ["handler"],
            registry=reg,
        )
        self.duration_highr = Histogram(
            "http_request_duration_highr_seconds",
            "Latency with many buckets but no API specific labels. Made for more accurate "
            "percentile calculations. ",
            buckets=HTTP_HIGHR_BUCKETS,
            registry=reg,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Latency with only few buckets by handler. Made to be only used if aggregation by "
            "handler is important. ",
            ["handler", "method"],
            buckets=(0.1, 0.5, 1.0),
            registry=reg,
        )

    def observe(
        self,
        handler: str,
        method: str,
        status: int,
        request_bytes: int,
        response_bytes: int,
        seconds: float,
    ) -> None:
        """Record one finished HTTP request."""
        self.requests.labels(method, f"{status // 100}xx", handler).inc()
        self.request_size.labels(handler).observe(request_bytes)
        self.response_size.labels(handler).observe(response_bytes)
        self.duration_highr.observe(seconds)
        self.duration.labels(handler, method).observe(seconds)
