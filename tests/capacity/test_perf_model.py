"""The performance model: scaling laws, KV capacity, MIG slices, published figures."""

from __future__ import annotations

import pytest

from infermeter.capacity.errors import ProfileError
from infermeter.capacity.perf_model import PerformanceModel
from infermeter.capacity.profiles import (
    GIB,
    resolve_gpu,
    resolve_model,
    resolve_quantization,
)
from tests.serving.simulator.simulator_helpers import h100_llama8b

LLAMA8B = resolve_model("llama-3.1-8b")
BF16 = resolve_quantization("bf16")


def test_kv_bytes_per_token_of_llama_8b() -> None:
    # 2 (K and V) x 32 layers x 8 KV heads x 128 dims x 2 bytes
    assert LLAMA8B.kv_bytes_per_token() == 131072


def test_kv_capacity_is_memory_left_after_weights_in_whole_blocks() -> None:
    perf = h100_llama8b(gpu_memory_utilization=0.9, max_num_batched_tokens=8192)
    gpu = resolve_gpu("h100-sxm")
    left = gpu.memory_bytes * 0.9 - 8.03e9 * 2 - GIB - 16 * 4096 * 8192
    assert perf.num_gpu_blocks == int(left // (16 * 131072))
    assert perf.kv_capacity_tokens == perf.num_gpu_blocks * 16
    more = h100_llama8b(gpu_memory_utilization=0.95)
    assert more.kv_capacity_tokens > perf.kv_capacity_tokens


def test_prefill_is_compute_bound_and_linear_in_tokens() -> None:
    perf = h100_llama8b()
    t1, t2, t4 = perf.prefill_s(1024), perf.prefill_s(2048), perf.prefill_s(4096)
    assert 1.9 < t2 / t1 < 2.3
    assert 1.9 < t4 / t2 < 2.4
    flops = 2 * 8.03e9 * 4096
    assert t4 > flops / 989e12  # never faster than peak


def test_decode_is_memory_bound_flat_in_batch_then_rising() -> None:
    perf = h100_llama8b()
    one, eight = perf.decode_step_s(1, 512), perf.decode_step_s(8, 512)
    assert eight / one < 1.1  # weights dominate: batching is nearly free
    assert perf.decode_step_s(256, 2048) > 2 * one  # KV reads and compute catch up
    assert perf.decode_step_s(1, 32768) > perf.decode_step_s(1, 512)
    weights_only = 8.03e9 * 2 / (3.35e12 * 0.8)
    assert one == pytest.approx(weights_only + 512 * 131072 / (3.35e12 * 0.8) + 0.0005)


def test_mig_slice_takes_its_fraction_of_compute_memory_and_bandwidth() -> None:
    full = resolve_gpu("h100-sxm")
    slice_ = resolve_gpu("h100-sxm:3g.40gb")
    assert slice_.compute_fraction == pytest.approx(3 / 7)
    assert slice_.memory_fraction == pytest.approx(4 / 8)
    assert slice_.memory_bytes == full.memory_bytes // 2
    assert slice_.bf16_flops == pytest.approx(full.bf16_flops * 3 / 7)
    small = resolve_gpu("a100-40gb:1g.5gb")
    assert small.memory_fraction == pytest.approx(1 / 8)
    assert small.compute_fraction == pytest.approx(1 / 7)
    on_slice = PerformanceModel(slice_, LLAMA8B, BF16)
    assert on_slice.decode_step_s(1, 512) == pytest.approx(
        2 * (h100_llama8b().decode_step_s(1, 512) - 0.0005) + 0.0005, rel=0.01
    )
    assert on_slice.prefill_s(2048) > 2 * h100_llama8b().prefill_s(2048)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("h100-sxm:2g.40gb", "valid: 1g.10gb"),
        ("l4:1g.5gb", "no MIG support"),
        ("b900", "unknown GPU profile"),
    ],
)
def test_bad_gpu_profiles_are_clear_errors(spec: str, needle: str) -> None:
    with pytest.raises(ProfileError, match=needle):
        resolve_gpu(spec)


def test_model_that_does_not_fit_is_a_clear_error() -> None:
    with pytest.raises(ProfileError, match=r"does not fit on h100-sxm:1g\.10gb"):
        PerformanceModel(resolve_gpu("h100-sxm:1g.10gb"), LLAMA8B, BF16)
    with pytest.raises(ProfileError, match="unknown quantization"):
        resolve_quantization("int3")


def test_quantization_changes_weight_bytes_and_tensor_core_rate() -> None:
    fp8 = PerformanceModel(resolve_gpu("h100-sxm"), LLAMA8B, resolve_quantization("fp8"))
    awq = PerformanceModel(resolve_gpu("h100-sxm"), LLAMA8B, resolve_quantization("awq"))
    bf16 = h100_llama8b()
    assert fp8.weight_bytes == bf16.weight_bytes / 2
    assert awq.weight_bytes < fp8.weight_bytes
    assert fp8.flops_per_s == 1979e12  # H100 has FP8 tensor cores
    a100_fp8 = PerformanceModel(resolve_gpu("a100-80gb"), LLAMA8B, resolve_quantization("fp8"))
    assert a100_fp8.flops_per_s == 312e12  # A100 does not: W8A16 at the BF16 rate
    assert fp8.decode_step_s(1, 512) < 0.6 * bf16.decode_step_s(1, 512)
    assert fp8.kv_capacity_tokens > bf16.kv_capacity_tokens


# Published vLLM figures (docs/simulator.md, "Calibration"):
# InferenceBench concurrency sweep, Llama-3.1-8B-Instruct fp16, vLLM 0.21.0, one H100-80GB-HBM3:
# median TPOT 6.48 ms at concurrency 1 and 6.59 ms at concurrency 4.
# https://yobitelcomm.github.io/bench/recipes/concurrency-sweep/
H100_TPOT_MS = (6.48, 6.59)
# John Musgrave, vLLM 0.23.0 sweep on one A100 40GB, Llama-3.1-8B-Instruct BF16, 1024-token
# prompts, 128 output tokens: "decode at one request per time runs at about 75 tokens/sec".
# https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on
A100_40GB_SINGLE_STREAM_TOK_S = 75.0


@pytest.mark.parametrize("batch", [1, 4])
def test_h100_llama8b_decode_lands_in_published_range(batch: int) -> None:
    predicted_ms = h100_llama8b().decode_step_s(batch, 600) * 1000
    low, high = H100_TPOT_MS
    assert low * 0.9 <= predicted_ms <= high * 1.1, predicted_ms


def test_a100_40gb_llama8b_single_stream_lands_in_published_range() -> None:
    perf = PerformanceModel(resolve_gpu("a100-40gb"), LLAMA8B, BF16)
    tokens_per_s = 1 / perf.decode_step_s(1, 1024 + 64)
    assert (
        A100_40GB_SINGLE_STREAM_TOK_S * 0.9 <= tokens_per_s <= A100_40GB_SINGLE_STREAM_TOK_S * 1.1
    )


def test_fp8_kv_cache_doubles_capacity_and_halves_kv_reads() -> None:
    from infermeter.serving.simulator.settings import SimulatorSettings, build_profile

    auto = build_profile(SimulatorSettings()).perf
    fp8 = build_profile(SimulatorSettings(kv_cache_dtype="fp8")).perf
    assert fp8.kv_bytes_per_token == auto.kv_bytes_per_token / 2
    assert 1.99 < fp8.kv_capacity_tokens / auto.kv_capacity_tokens < 2.01
    long_context = auto.decode_step_s(64, 8000) - fp8.decode_step_s(64, 8000)
    assert long_context > 0.001  # reading half the KV bytes is visibly faster


def test_tensor_parallelism_splits_weights_kv_and_adds_all_reduce_time() -> None:
    llama70 = resolve_model("llama-3.1-70b")
    h100 = resolve_gpu("h100-sxm")
    with pytest.raises(ProfileError, match="does not fit"):
        PerformanceModel(h100, llama70, BF16)
    tp2 = PerformanceModel(h100, llama70, BF16, tensor_parallel_size=2)
    tp4 = PerformanceModel(h100, llama70, BF16, tensor_parallel_size=4)
    assert tp4.kv_capacity_tokens > 4 * tp2.kv_capacity_tokens  # weights leave room for KV
    weights_only_tp4 = llama70.params * 2 / 4 / (3.35e12 * 0.8)
    step = tp4.decode_step_s(1, 600)
    assert step > weights_only_tp4 + 0.0005  # all-reduces are not free
    assert step < tp2.decode_step_s(1, 600) / 1.6
    eight_tp1 = h100_llama8b()
    eight_tp2 = PerformanceModel(h100, LLAMA8B, BF16, tensor_parallel_size=2)
    assert eight_tp2.decode_step_s(1, 600) < eight_tp1.decode_step_s(1, 600)
    cost = eight_tp2.step(1, 600, 600)
    assert cost.flops == pytest.approx(eight_tp1.step(1, 600, 600).flops / 2)  # per GPU


@pytest.mark.parametrize(
    ("gpu", "tp", "needle"),
    [("h100-sxm:3g.40gb", 2, "MIG"), ("h100-sxm", 3, "must divide")],
)
def test_impossible_tensor_parallel_layouts_are_refused(gpu: str, tp: int, needle: str) -> None:
    with pytest.raises(ProfileError, match=needle):
        PerformanceModel(resolve_gpu(gpu), LLAMA8B, BF16, tensor_parallel_size=tp)
