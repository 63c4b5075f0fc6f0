"""The performance model: how long one engine step takes and how much KV cache fits.

One step of a continuous-batching engine runs every scheduled token (prefill chunks and one
decode token per running sequence) through the model once. It is bounded by whichever is
slower, the tensor cores or the memory system (a roofline), plus a fixed per-step overhead
(scheduling, kernel launches, sampling)::

    flops      = 2 · P · T  +  4 · L · H · D · A
    read_bytes = W + kv · C
    step_s     = max(flops / (F · mfu), read_bytes / (B · eff)) + overhead

with P parameters, T tokens in the step, L layers, H attention heads of width D, A the sum
over scheduled tokens of the context each attends to, W the weight bytes, kv the KV bytes
per token, C the context tokens whose KV the step reads, F the dense FLOP/s (FP8 rate for
FP8 weights on GPUs that have it), B the memory bandwidth. Prefill-heavy steps land on the
compute side (time grows with prompt tokens), decode-only steps on the memory side (time is
nearly flat in batch size until KV reads or compute catch up). See docs/simulator.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from infermeter.capacity.errors import ProfileError
from infermeter.capacity.profiles import GIB, GpuProfile, ModelProfile, Quantization


@dataclass(frozen=True)
class Efficiency:
    """Fractions of peak a real engine reaches; defaults fit published vLLM figures."""

    mfu: float = 0.55  # model FLOPs utilisation of compute-bound (prefill) steps
    bandwidth: float = 0.80  # achieved / peak memory bandwidth in memory-bound steps
    step_overhead_s: float = 0.0005  # scheduler, sampling, launch gaps per step
    reserve_bytes: int = GIB  # CUDA context, CUDA graphs, allocator slack
    activation_bytes_per_token: int = 16  # × hidden size × max_num_batched_tokens
    allreduce_latency_s: float = 8e-6  # fixed cost of one tensor-parallel all-reduce


@dataclass(frozen=True)
class StepCost:
    """What one step costs: its duration and the work behind it (per GPU)."""

    seconds: float
    flops: float
    read_bytes: float
    write_bytes: float


class PerformanceModel:
    """Step times and KV-cache capacity of one model on one GPU, a MIG slice, or N GPUs
    with tensor parallelism (weights, KV heads and FLOPs split N ways; two all-reduces of
    the step's activations per layer over the GPUs' interconnect)."""

    def __init__(
        self,
        gpu: GpuProfile,
        model: ModelProfile,
        quantization: Quantization,
        *,
        gpu_memory_utilization: float = 0.9,
        max_num_batched_tokens: int = 8192,
        block_size: int = 16,
        kv_dtype_bytes: float = 2.0,
        tensor_parallel_size: int = 1,
        efficiency: Efficiency | None = None,
    ) -> None:
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ProfileError(
                f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        tp = tensor_parallel_size
        if tp < 1 or model.attention_heads % tp or model.kv_heads % tp:
            raise ProfileError(
                f"tensor_parallel_size={tp} must divide {model.name}'s {model.attention_heads} "
                f"attention heads and {model.kv_heads} KV heads"
            )
        if tp > 1 and gpu.mig_profile:
            raise ProfileError(
                f"tensor parallelism across MIG slices ({gpu.name}) is not supported: "
                "MIG instances have no peer-to-peer interconnect"
            )
        self.tp = tp
        self.gpu = gpu
        self.model = model
        self.quantization = quantization
        self.efficiency = efficiency or Efficiency()
        self.block_size = block_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.weight_bytes = model.params * quantization.bytes_per_param
        self.kv_bytes_per_token = model.kv_bytes_per_token(kv_dtype_bytes)
        use_fp8 = quantization.fp8_compute and gpu.fp8_flops is not None
        self.flops_per_s = gpu.fp8_flops if use_fp8 and gpu.fp8_flops else gpu.bf16_flops
        eff = self.efficiency
        self.activation_bytes = (
            eff.activation_bytes_per_token * model.hidden_size * max_num_batched_tokens
        )
        budget = gpu.memory_bytes * gpu_memory_utilization
        self.kv_cache_bytes = (
            budget - self.weight_bytes / tp - eff.reserve_bytes - self.activation_bytes
        )  # per GPU
        block_bytes = self.kv_bytes_per_token / tp * block_size
        self.num_gpu_blocks = (
            int(self.kv_cache_bytes // block_bytes) if self.kv_cache_bytes > 0 else 0
        )
        if self.num_gpu_blocks < 1:
            raise ProfileError(
                f"{model.name} ({quantization.name}, {self.weight_bytes / GIB:.1f} GiB of weights) "
                f"does not fit on {gpu.name}" + (f" x{tp}" if tp > 1 else "") + " with "
                f"gpu_memory_utilization={gpu_memory_utilization}: "
                f"{budget / GIB:.1f} GiB usable leaves no room for the KV cache"
            )
        self.kv_capacity_tokens = self.num_gpu_blocks * block_size
        self._attn_flops_per_pair = 4 * model.layers * model.attention_heads * model.head_dim
        self._compute_rate = self.flops_per_s * eff.mfu
        self._memory_rate = gpu.bandwidth_bytes_s * eff.bandwidth
        # ring all-reduce of T x hidden 16-bit activations, twice per layer
        self._allreduce_bytes_per_token = 2 * (tp - 1) / tp * model.hidden_size * 2
        self._allreduces = 2 * model.layers if tp > 1 else 0

    def step(self, tokens: int, attention_pairs: float, context_read: float) -> StepCost:
        """Cost of a step that computes ``tokens`` tokens.

        ``attention_pairs``: sum over those tokens of the context length each attends to;
        ``context_read``: tokens of existing KV cache the step reads (all sequences' context).
        """
        tp = self.tp
        flops = (
            2.0 * self.model.params * tokens + self._attn_flops_per_pair * attention_pairs
        ) / tp
        read = (self.weight_bytes + self.kv_bytes_per_token * context_read) / tp
        write = self.kv_bytes_per_token * tokens / tp
        seconds = max(flops / self._compute_rate, read / self._memory_rate)
        if self._allreduces:
            per_op = self._allreduce_bytes_per_token * tokens / self.gpu.interconnect_bytes_s
            seconds += self._allreduces * (per_op + self.efficiency.allreduce_latency_s)
        return StepCost(seconds + self.efficiency.step_overhead_s, flops, read, write)

    def step_shares(
        self, tokens: Sequence[int], pairs: Sequence[float], context: Sequence[float]
    ) -> list[float]:
        """Each request's seconds of the step :meth:`step` prices for these requests together
        (``tokens``, ``pairs``, ``context`` per request; they sum to the step's arguments).

        The roofline's binding resource is split by what each request asks of it: FLOPs when
        the step is compute-bound, memory reads when memory-bound (weights by tokens, KV cache
        by context read); the per-step overhead and all-reduces by tokens. The shares sum to
        ``step(sum(tokens), sum(pairs), sum(context)).seconds`` up to rounding."""
        total_tokens = sum(tokens)
        cost = self.step(total_tokens, sum(pairs), sum(context))
        tp = self.tp
        flops = [
            (2.0 * self.model.params * t + self._attn_flops_per_pair * a) / tp
            for t, a in zip(tokens, pairs, strict=True)
        ]
        weights_per_token = self.weight_bytes / max(total_tokens, 1)
        reads = [
            (weights_per_token * t + self.kv_bytes_per_token * c) / tp
            for t, c in zip(tokens, context, strict=True)
        ]
        compute_s, memory_s = sum(flops) / self._compute_rate, sum(reads) / self._memory_rate
        core_s, basis = (compute_s, flops) if compute_s >= memory_s else (memory_s, reads)
        basis_total = sum(basis) or 1.0
        rest_s = cost.seconds - core_s  # overhead and all-reduces, by tokens
        per_token = rest_s / max(total_tokens, 1)
        return [
            core_s * b / basis_total + per_token * t for b, t in zip(basis, tokens, strict=True)
        ]

    def decode_step_s(self, batch: int, context: int) -> float:
        """Duration of a decode-only step: ``batch`` sequences, each ``context`` tokens long."""
        return self.step(batch, batch * context, batch * context).seconds

    def prefill_s(self, prompt_tokens: int) -> float:
        """Duration of a step prefilling one prompt of ``prompt_tokens`` tokens from scratch."""
        pairs = prompt_tokens * (prompt_tokens + 1) / 2
        return self.step(prompt_tokens, pairs, 0).seconds

    def max_concurrency(self, max_model_len: int) -> float:
        """How many full-length sequences the KV cache holds (vLLM's kv_cache_max_concurrency)."""
        return self.kv_capacity_tokens / max_model_len
