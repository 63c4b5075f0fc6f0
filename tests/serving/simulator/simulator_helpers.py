"""Small engines for the simulator tests (imported by the test modules)."""

from __future__ import annotations

from infermeter.capacity.perf_model import PerformanceModel
from infermeter.capacity.profiles import resolve_gpu, resolve_model, resolve_quantization
from infermeter.serving.simulator.engine import Engine
from infermeter.serving.simulator.metrics import VllmMetrics


def h100_llama8b(**kwargs: object) -> PerformanceModel:
    return PerformanceModel(
        resolve_gpu("h100-sxm"),
        resolve_model("llama-3.1-8b"),
        resolve_quantization("bf16"),
        **kwargs,  # type: ignore[arg-type]
    )


def make_engine(
    perf: PerformanceModel | None = None,
    *,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 8192,
) -> Engine:
    perf = perf or h100_llama8b(max_num_batched_tokens=max_num_batched_tokens)
    metrics = VllmMetrics("sim", cache_config={}, simulator_labels={"simulator": "true"})
    return Engine(
        perf,
        metrics,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
    )
