"""vLLM 0.32 wire facts shared by every component that reads or imitates an engine.

The metric families the collector scrapes and the simulator exposes, their histogram bucket
boundaries (as vLLM's ``v1/metrics/loggers.py`` declares them) and the content type of the
exposition. The simulator builds its registry from these; the collector reads these names
from a real engine's ``/metrics`` and uses the same buckets for its own request histograms so
that its series line up with vLLM's. Checked against the captured vLLM exposition by the
conformance suite (tests/serving/conformance).
"""

from __future__ import annotations

CONTENT_TYPE = "text/plain; version=1.0.0; charset=utf-8"

# gauges
NUM_REQUESTS_RUNNING = "vllm:num_requests_running"
NUM_REQUESTS_WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE_PERC = "vllm:kv_cache_usage_perc"
# counters (exposed with a ``_total`` suffix)
PROMPT_TOKENS_TOTAL = "vllm:prompt_tokens_total"
GENERATION_TOKENS_TOTAL = "vllm:generation_tokens_total"
NUM_PREEMPTIONS_TOTAL = "vllm:num_preemptions_total"
# histograms
TIME_TO_FIRST_TOKEN = "vllm:time_to_first_token_seconds"
INTER_TOKEN_LATENCY = "vllm:inter_token_latency_seconds"
# per-request phase histograms: name without the ``vllm:`` prefix, help text phase
REQUEST_PHASES = {
    "e2e": ("e2e_request_latency_seconds", ""),
    "queue": ("request_queue_time_seconds", "WAITING"),
    "inference": ("request_inference_time_seconds", "RUNNING"),
    "prefill": ("request_prefill_time_seconds", "PREFILL"),
    "decode": ("request_decode_time_seconds", "DECODE"),
}

FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")

TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)
REQUEST_SECONDS_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
# prometheus-fastapi-instrumentator's high-resolution latency buckets (vLLM's API server)
HTTP_HIGHR_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5,
    5.0, 7.5, 10.0, 30.0, 60.0,
)  # fmt: skip
