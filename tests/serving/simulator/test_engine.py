"""The scheduler in virtual time: batching, queueing, chunked prefill, preemption, aborts."""

from __future__ import annotations

import random

import pytest

from infermeter.capacity.perf_model import PerformanceModel
from infermeter.capacity.profiles import GIB, resolve_gpu, resolve_model, resolve_quantization
from infermeter.serving.simulator.engine import (
    ABORTED,
    FINISHED,
    RUNNING,
    WAITING,
    Engine,
    SimRequest,
)
from infermeter.serving.simulator.text import block_hashes, plan_completion, text_units
from tests.serving.simulator.simulator_helpers import h100_llama8b, make_engine


def request(prompt: int, tokens: int, seed: int = 0, rid: str = "r") -> SimRequest:
    plan = plan_completion(random.Random(seed), tokens, ignore_eos=True)
    return SimRequest(rid, prompt, plan, tokens)


def run_all(engine: Engine, limit: int = 100_000) -> int:
    steps = 0
    while engine.has_work():
        assert engine.step() is not None
        steps += 1
        assert steps < limit
    return steps


def value(engine: Engine, name: str, **labels: str) -> float:
    got = engine.metrics.registry.get_sample_value(
        name, {"engine": "0", "model_name": "sim", **labels}
    )
    assert got is not None, name
    return got


def test_requests_are_batched_prefill_then_one_token_each_per_step() -> None:
    engine = make_engine()
    reqs = [request(100, 5, seed=i, rid=f"r{i}") for i in range(4)]
    for r in reqs:
        engine.add(r)
    first = engine.step()
    assert first is not None and first.tokens == 400  # four prompts in one step
    assert all(r.num_output == 1 for r in reqs)  # each prefill yields its first token
    second = engine.step()
    assert second is not None and second.tokens == 4  # then one decode token per sequence
    assert second.end - second.start < first.end - first.start
    run_all(engine)
    assert all(r.status == FINISHED and r.num_output == 5 for r in reqs)
    assert value(engine, "vllm:request_success_total", finished_reason="length") == 4
    assert value(engine, "vllm:generation_tokens_total") == 20
    assert value(engine, "vllm:prompt_tokens_total") == 400
    assert value(engine, "vllm:iteration_tokens_total_sum") == 420
    assert value(engine, "vllm:e2e_request_latency_seconds_count") == 4


def test_ttft_and_itl_come_from_the_performance_model() -> None:
    engine = make_engine()
    engine.add(request(1000, 3))
    run_all(engine)
    perf = h100_llama8b()
    assert value(engine, "vllm:time_to_first_token_seconds_sum") == pytest.approx(
        perf.prefill_s(1000)
    )
    assert value(engine, "vllm:inter_token_latency_seconds_count") == 2
    itl = value(engine, "vllm:inter_token_latency_seconds_sum") / 2
    assert itl == pytest.approx(perf.decode_step_s(1, 1001), rel=0.01)


def test_requests_queue_when_max_num_seqs_is_reached() -> None:
    engine = make_engine(max_num_seqs=2)
    reqs = [request(50, 10, rid=f"r{i}") for i in range(5)]
    for r in reqs:
        engine.add(r)
    engine.step()
    assert [r.status for r in reqs] == [RUNNING, RUNNING, WAITING, WAITING, WAITING]
    assert value(engine, "vllm:num_requests_running") == 2
    assert value(engine, "vllm:num_requests_waiting") == 3
    assert value(engine, "vllm:num_requests_waiting_by_reason", reason="capacity") == 3
    run_all(engine)
    assert value(engine, "vllm:num_requests_waiting") == 0
    queue_sum = value(engine, "vllm:request_queue_time_seconds_sum")
    assert queue_sum > 0  # the last three waited for the first two to finish
    assert reqs[4].first_scheduled is not None and reqs[4].first_scheduled > reqs[4].arrival


def test_long_prompts_are_prefilled_in_chunks_of_the_token_budget() -> None:
    engine = make_engine(max_num_batched_tokens=1024)
    req = request(3000, 2)
    engine.add(req)
    steps = [engine.step() for _ in range(3)]
    assert [s.tokens for s in steps if s] == [1024, 1024, 952]
    assert req.num_output == 1  # first token only after the last chunk
    assert value(engine, "vllm:prompt_tokens_total") == 3000


def small_kv_model(tokens: int) -> PerformanceModel:
    """Llama-3.2-1B on an L4 with gpu_memory_utilization chosen to leave ~``tokens`` of KV."""
    gpu, model, quant = (
        resolve_gpu("l4"),
        resolve_model("llama-3.2-1b"),
        resolve_quantization("bf16"),
    )
    fixed = model.params * 2 + GIB + 16 * model.hidden_size * 8192
    util = (fixed + tokens * model.kv_bytes_per_token()) / gpu.memory_bytes
    return PerformanceModel(gpu, model, quant, gpu_memory_utilization=util)


def test_kv_exhaustion_preempts_and_recomputes() -> None:
    perf = small_kv_model(640)
    assert 600 <= perf.kv_capacity_tokens <= 660
    engine = make_engine(perf)
    reqs = [request(100, 200, seed=i, rid=f"r{i}") for i in range(4)]  # 4 x 300 > 640
    for r in reqs:
        engine.add(r)
    peak_usage = 0.0
    while engine.has_work():
        engine.step()
        peak_usage = max(peak_usage, value(engine, "vllm:kv_cache_usage_perc"))
        assert engine.free_blocks >= 0
    assert peak_usage > 0.9
    assert value(engine, "vllm:num_preemptions_total") >= 1
    assert sum(r.preemptions for r in reqs) == value(engine, "vllm:num_preemptions_total")
    assert all(r.status == FINISHED and r.num_output == 200 for r in reqs)
    assert engine.free_blocks == engine.total_blocks  # everything given back
    assert value(engine, "vllm:generation_tokens_total") == 800  # recompute emits no extra


def test_abort_frees_kv_and_counts_tokens_but_no_finished_request() -> None:
    engine = make_engine()
    req = request(200, 100)
    engine.add(req)
    for _ in range(10):
        engine.step()
    assert engine.free_blocks < engine.total_blocks
    engine.abort(req)
    assert req.status == ABORTED
    assert engine.free_blocks == engine.total_blocks
    assert not engine.has_work()
    assert value(engine, "vllm:generation_tokens_total") == 10
    assert value(engine, "vllm:prompt_tokens_total") == 200
    assert value(engine, "vllm:time_to_first_token_seconds_count") == 1
    for reason in ("stop", "length", "abort"):
        assert value(engine, "vllm:request_success_total", finished_reason=reason) == 0
    assert value(engine, "vllm:e2e_request_latency_seconds_count") == 0
    waiting = request(10, 5, rid="w")
    engine.add(waiting)
    engine.abort(waiting)  # aborting a queued request just drops it
    assert not engine.has_work()


def test_lookahead_holds_a_stream_back_until_its_client_catches_up() -> None:
    engine = make_engine()
    engine.lookahead = 4
    req = request(10, 50)
    req.delivered = 0
    engine.add(req)
    while engine.step() is not None:
        pass
    assert req.num_output == 4  # blocked: nothing delivered yet
    req.delivered = 4
    while engine.step() is not None:
        pass
    assert req.num_output == 8


def trace(seed: int) -> list[tuple[float, int]]:
    engine = make_engine(max_num_seqs=3)
    rng = random.Random(seed)
    reqs = [request(rng.randint(10, 900), rng.randint(1, 60), seed=i) for i in range(12)]
    for r in reqs:
        engine.add(r)
    out = []
    while engine.has_work():
        step = engine.step()
        assert step is not None
        out.append((step.end, step.tokens))
    return out


def test_same_seed_same_schedule() -> None:
    assert trace(3) == trace(3)
    assert trace(3) != trace(4)


def test_with_a_clock_idle_time_comes_from_the_clock(manual_clock) -> None:
    perf = h100_llama8b()
    engine = make_engine(perf)
    engine.clock = manual_clock
    engine.time = manual_clock()
    engine.add(request(100, 1))
    step = engine.step()
    assert step is not None and step.start == manual_clock()
    manual_clock.advance(5.0)
    req = request(100, 1)
    engine.add(req)
    assert req.arrival == manual_clock()
    second = engine.step()
    assert second is not None and second.start == manual_clock()


def cached_request(units: list[str], tokens: int, rid: str) -> SimRequest:
    plan = plan_completion(random.Random(1), tokens, ignore_eos=True)
    return SimRequest(rid, len(units), plan, tokens, block_hashes=block_hashes(units, 16))


def test_prefix_cache_skips_the_shared_prompt_prefix() -> None:
    system = text_units("You are a careful assistant for billing questions. " * 120)
    first_units = ["<bos>", *system, *text_units("What did tenant A spend?")]
    second_units = ["<bos>", *system, *text_units("And tenant B, last week?")]
    engine = make_engine()
    first = cached_request(first_units, 4, "a")
    engine.add(first)
    run_all(engine)
    ttft_first = value(engine, "vllm:time_to_first_token_seconds_sum")
    second = cached_request(second_units, 4, "b")
    engine.add(second)
    run_all(engine)
    ttft_second = value(engine, "vllm:time_to_first_token_seconds_sum") - ttft_first
    shared_blocks = (len(system) + 1) // 16
    assert second.cached_tokens == shared_blocks * 16 > 0
    assert ttft_second < ttft_first / 3  # only the new question was prefilled
    assert value(engine, "vllm:prefix_cache_hits_total") == second.cached_tokens
    assert value(engine, "vllm:prefix_cache_queries_total") == first.prompt_tokens + len(
        second_units
    )
    assert value(engine, "vllm:prompt_tokens_total") == len(first_units) + len(second_units)
    assert value(engine, "vllm:prompt_tokens_by_source_total", source="local_cache_hit") == (
        second.cached_tokens
    )
    assert value(engine, "vllm:prompt_tokens_cached_total") == second.cached_tokens
    assert value(engine, "vllm:request_prefill_kv_computed_tokens_sum") == (
        len(first_units) + len(second_units) - second.cached_tokens
    )
    assert engine.free_blocks == engine.total_blocks  # cached blocks count as free


def test_concurrent_requests_share_prompt_blocks_in_the_kv_cache() -> None:
    units = ["<bos>", *text_units("shared context " * 400)]
    engine = make_engine()
    engine.add(cached_request(units, 50, "a"))
    engine.step()  # first request prefilled and registered
    used_by_one = engine.total_blocks - engine.free_blocks
    for i in range(3):
        engine.add(cached_request(units, 50, f"b{i}"))
    engine.step()
    used_by_four = engine.total_blocks - engine.free_blocks
    assert used_by_four < 1.2 * used_by_one  # the prompt is held once, not four times
    run_all(engine)
    assert engine.free_blocks == engine.total_blocks


def test_prefix_caching_can_be_switched_off() -> None:
    units = ["<bos>", *text_units("same prompt again " * 100)]
    perf = h100_llama8b()
    engine = make_engine(perf)
    engine.kv.prefix_caching = False
    for rid in ("a", "b"):
        engine.add(cached_request(units, 2, rid))
        run_all(engine)
    assert value(engine, "vllm:prefix_cache_hits_total") == 0


def test_preemption_with_prefix_caching_keeps_the_block_accounting_exact() -> None:
    engine = make_engine(small_kv_model(640))
    reqs = [
        cached_request(["<bos>", *text_units(f"prompt {i} " * 60)], 200, f"r{i}") for i in range(4)
    ]
    for r in reqs:
        engine.add(r)
    while engine.has_work():
        engine.step()
        assert 0 <= engine.free_blocks <= engine.total_blocks
        held = sum(r.blocks + len(r.shared) for r in engine.running)
        assert held <= engine.total_blocks - engine.free_blocks
    assert value(engine, "vllm:num_preemptions_total") >= 1
    assert all(r.status == FINISHED and r.num_output == 200 for r in reqs)
    assert engine.free_blocks == engine.total_blocks


def test_observe_many_equals_repeated_observe() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from infermeter.serving.simulator.metrics import ITL_BUCKETS, observe_many

    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("h", "h", buckets=ITL_BUCKETS, registry=one)
    h2 = Histogram("h", "h", buckets=ITL_BUCKETS, registry=many)
    for value, count in ((0.004, 3), (0.06, 5), (0.2, 1), (100.0, 2)):
        for _ in range(count):
            h1.observe(value)
        observe_many(h2, value, count)
    for sample in ("h_sum", "h_count"):
        assert one.get_sample_value(sample) == pytest.approx(many.get_sample_value(sample))
    for bound in ITL_BUCKETS:
        le = {"le": str(float(bound))}
        assert one.get_sample_value("h_bucket", le) == many.get_sample_value("h_bucket", le)
