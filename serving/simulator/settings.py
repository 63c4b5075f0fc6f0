"""The ``[simulator]`` table: every option of ``infermeter engine simulate``.

Defaults follow vLLM's (``max_num_seqs`` 256, ``max_num_batched_tokens`` 8192,
``gpu_memory_utilization`` 0.9, block size 16). :func:`build_profile` resolves the named
profiles into a performance model and fails with a clear :class:`ProfileError` when the
configuration cannot run (unknown profile, model too big for the GPU, context longer than
the KV cache holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from infermeter.capacity.errors import ProfileError
from infermeter.capacity.perf_model import Efficiency, PerformanceModel
from infermeter.capacity.profiles import resolve_gpu, resolve_model, resolve_quantization


class SimulatorSettings(BaseModel):
    """Options of one simulated vLLM replica (``[simulator]`` table; CLI flags override)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    model: str = "llama-3.1-8b"
    served_model_name: str | None = None
    gpu: str = "h100-sxm"
    quantization: str = "bf16"
    tensor_parallel_size: int = Field(default=1, ge=1, le=8)
    max_num_seqs: int = Field(default=256, ge=1)
    max_model_len: int | None = Field(default=None, ge=16)
    max_num_batched_tokens: int = Field(default=8192, ge=16)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    block_size: int = Field(default=16, ge=1)
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    enable_prefix_caching: bool = True
    enable_prompt_tokens_details: bool = False  # vLLM's flag: usage carries cached_tokens
    seed: int = 0
    time_scale: float = Field(default=1.0, ge=0.0)
    replica_name: str | None = None
    output_tokens_median: float = Field(default=256.0, gt=0.0)
    output_tokens_sigma: float = Field(default=0.8, ge=0.0)
    mfu: float = Field(default=0.55, gt=0.0, le=1.0)
    bandwidth_efficiency: float = Field(default=0.80, gt=0.0, le=1.0)
    step_overhead_ms: float = Field(default=0.5, ge=0.0)
    ledger: str = ""  # ground-truth ledger file (empty: none); see serving/simulator/ledger.py

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def replica(self) -> str:
        return self.replica_name or f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Profile:
    """The resolved configuration: performance model and effective context length."""

    perf: PerformanceModel
    max_model_len: int


def build_profile(settings: SimulatorSettings) -> Profile:
    """Resolve the GPU/model/quantization names and check the configuration can run."""
    gpu = resolve_gpu(settings.gpu)
    model = resolve_model(settings.model)
    quant = resolve_quantization(settings.quantization)
    efficiency = Efficiency(
        mfu=settings.mfu,
        bandwidth=settings.bandwidth_efficiency,
        step_overhead_s=settings.step_overhead_ms / 1000.0,
    )
    perf = PerformanceModel(
        gpu,
        model,
        quant,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        block_size=settings.block_size,
        kv_dtype_bytes=1.0 if settings.kv_cache_dtype.startswith("fp8") else 2.0,
        tensor_parallel_size=settings.tensor_parallel_size,
        efficiency=efficiency,
    )
    if settings.max_model_len is None:
        max_model_len = min(model.max_context, perf.kv_capacity_tokens)
    else:
        max_model_len = settings.max_model_len
        if max_model_len > model.max_context:
            raise ProfileError(
                f"max_model_len={max_model_len} is longer than {model.name}'s context "
                f"({model.max_context} tokens)"
            )
        if max_model_len > perf.kv_capacity_tokens:
            raise ProfileError(
                f"max_model_len={max_model_len} needs more KV cache than {gpu.name} has left "
                f"for {model.name} ({perf.kv_capacity_tokens} tokens); lower max_model_len or "
                "raise gpu_memory_utilization"
            )
    return Profile(perf, max_model_len)


def cache_config_labels(
    settings: SimulatorSettings, perf: PerformanceModel, max_model_len: int
) -> dict[str, str]:
    """Labels of ``vllm:cache_config_info``: vLLM 0.32's set, with the simulated values."""
    block = str(settings.block_size)
    labels = dict.fromkeys(_NONE_LABELS, "None")
    labels.update(dict.fromkeys(_FALSE_LABELS, "False"))
    labels.update(
        {
            "_block_size_resolved": "True",
            "block_size": block,
            "cache_dtype": settings.kv_cache_dtype,
            "effective_attention_block_size": block,
            "enable_prefix_caching": str(settings.enable_prefix_caching),
            "gpu_memory_utilization": str(settings.gpu_memory_utilization),
            "kv_cache_dtype_skip_layers": "[]",
            "kv_cache_max_concurrency": str(perf.max_concurrency(max_model_len)),
            "kv_cache_memory_bytes": str(int(perf.kv_cache_bytes)),
            "kv_cache_size_tokens": str(perf.kv_capacity_tokens),
            "kv_offloading_backend": "native",
            "mamba_cache_dtype": "auto",
            "mamba_cache_mode": "none",
            "mamba_ssm_cache_dtype": "auto",
            "num_gpu_blocks": str(perf.num_gpu_blocks),
            "prefix_cache_retention_interval": "0",
            "prefix_caching_hash_algo": "sha256",
            "replayssm_buffer_len": "16",
            "swa_bounded_replay": "True",
        }
    )
    return labels


_NONE_LABELS = (
    "cache_hit_alignment_tokens", "hash_block_size", "kv_cache_layout", "kv_offloading_size",
    "mamba_block_size", "mamba_page_size_padded", "num_cpu_blocks", "num_gpu_blocks_override",
    "prefix_match_unit", "skip_page_size_padded", "sliding_window",
)  # fmt: skip
_FALSE_LABELS = (
    "enable_mamba_shared_prefix_checkpoint", "is_attention_free", "kv_sharing_fast_prefill",
    "use_kda_recoverssm", "use_replayssm", "user_specified_block_size",
)  # fmt: skip
