"""``/metrics``: vLLM's families, types, labels and buckets, and counters that follow usage."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.serving.conformance.conformance_reference import (
    FAMILIES_THAT_MATTER,
    FINISHED_REASONS,
    families,
    reference_families,
    samples,
    total,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PROMPT = "import os\nimport sys\n\ndef main():"


def _scrape(client: httpx.Client) -> Samples:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    return samples(resp.text)


def _wait_for(
    client: httpx.Client, ready: Callable[[Samples], bool], timeout: float = 10.0
) -> Samples:
    """Scrape until ``ready`` holds (engines record a request's stats just after it ends)."""
    deadline = time.monotonic() + timeout
    while True:
        current = _scrape(client)
        if ready(current) or time.monotonic() > deadline:
            return current
        time.sleep(0.1)


def _delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def test_metrics_endpoint_is_prometheus_text(client):
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=")


@pytest.mark.parametrize("family", FAMILIES_THAT_MATTER)
def test_family_matches_vllm(engine, client, family):
    reference = reference_families()[family]
    live = families(client.get("/metrics").text)
    assert family in live, f"{family} missing from {engine.name}'s /metrics"
    got = live[family]
    assert got.type == reference.type
    assert reference.label_names <= got.label_names
    assert got.buckets == reference.buckets
    assert got.label_values["model_name"] == {engine.served_model}
    for label, values in reference.label_values.items():
        if label != "model_name":
            assert values <= got.label_values[label], f"{family}{{{label}}}"


def test_every_finished_reason_is_exported_from_the_start(client):
    live = families(client.get("/metrics").text)["vllm:request_success"]
    assert live.label_values["finished_reason"] >= FINISHED_REASONS


def _completion(client: httpx.Client, model: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True}
    resp = client.post("/v1/completions", json=body)
    assert resp.status_code == 200
    usage: dict[str, Any] = resp.json()["usage"]
    return usage


def _chat_stream(client: httpx.Client, model: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    usage: dict[str, Any] = {}
    with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                usage = json.loads(line[6:])["usage"]
    return usage


def test_counters_and_histograms_follow_usage(engine, client):
    before = _scrape(client)
    usages = [
        _completion(client, engine.served_model, 10),
        _chat_stream(client, engine.served_model, 7),
    ]
    prompt = sum(u["prompt_tokens"] for u in usages)
    generated = sum(u["completion_tokens"] for u in usages)
    assert generated == 17

    def settled(now: Samples) -> bool:
        return (
            _delta(now, before, "vllm:generation_tokens_total") >= generated
            and _delta(now, before, "vllm:e2e_request_latency_seconds_count") >= 2
        )

    after = _wait_for(client, settled)
    assert _delta(after, before, "vllm:prompt_tokens_total") == prompt
    assert _delta(after, before, "vllm:generation_tokens_total") == generated
    assert _delta(after, before, "vllm:request_success_total", finished_reason="length") == 2
    assert _delta(after, before, "vllm:request_success_total") == 2
    assert _delta(after, before, "vllm:request_prompt_tokens_count") == 2
    assert _delta(after, before, "vllm:request_prompt_tokens_sum") == prompt
    assert _delta(after, before, "vllm:request_generation_tokens_sum") == generated
    for histogram in (
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
        "vllm:request_inference_time_seconds",
    ):
        assert _delta(after, before, f"{histogram}_count") == 2, histogram
        inf_bucket = _delta(after, before, f"{histogram}_bucket", le="+Inf")
        assert inf_bucket == 2, histogram
    # one inter-token latency per token after the first, per request
    assert _delta(after, before, "vllm:inter_token_latency_seconds_count") == generated - 2
    assert _delta(after, before, "vllm:num_preemptions_total") == 0


def test_gauges_return_to_idle(client):
    idle = _wait_for(
        client,
        lambda s: (
            total(s, "vllm:num_requests_running") == 0
            and total(s, "vllm:num_requests_waiting") == 0
        ),
    )
    assert total(idle, "vllm:num_requests_running") == 0
    assert total(idle, "vllm:num_requests_waiting") == 0
    assert 0.0 <= total(idle, "vllm:kv_cache_usage_perc") <= 1.0


def test_gauges_show_an_active_stream(engine, client):
    """While a stream is open, the request is running and holds KV-cache blocks; afterwards
    both gauges return to idle. The engine publishes its gauges a moment after a step, so the
    scrape waits for them. The tiny model on the CPU writes its ~500 tokens into socket
    buffers in about a second and a half whether or not the client reads, so on a loaded
    machine a trial can end before any scrape lands inside it; such a trial says nothing about
    the gauges and is repeated (at most 3 times)."""
    prompt_tokens = _completion(client, engine.served_model, 1)["prompt_tokens"]
    body = {
        "model": engine.served_model,
        "prompt": PROMPT,
        "max_tokens": engine.max_model_len - prompt_tokens - 1,
        "ignore_eos": True,
        "stream": True,
    }
    for _attempt in range(3):
        with client.stream("POST", "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            next(line for line in lines if line.startswith("data: {"))
            during = _wait_for(
                client, lambda s: total(s, "vllm:num_requests_running") == 1, timeout=5.0
            )
            # drain the stream so the next trial (or the idle check) starts from an idle engine
            for _line in lines:
                pass
        if total(during, "vllm:num_requests_running") == 1:
            break
    assert total(during, "vllm:num_requests_running") == 1
    assert total(during, "vllm:num_requests_waiting") == 0
    assert 0.0 < total(during, "vllm:kv_cache_usage_perc") <= 1.0
    idle = _wait_for(client, lambda s: total(s, "vllm:num_requests_running") == 0)
    assert total(idle, "vllm:num_requests_running") == 0
    assert total(idle, "vllm:kv_cache_usage_perc") == 0.0


def test_client_abort_counts_tokens_but_not_a_finished_request(engine, client):
    """vLLM 0.32: a stream the client closes mid-way adds its prompt and generated tokens,
    a TTFT observation and inter-token latencies, but no ``request_success`` (not even
    ``finished_reason="abort"``) and no e2e latency. The simulator must do the same."""
    prompt_tokens = _completion(client, engine.served_model, 1)["prompt_tokens"]
    max_tokens = engine.max_model_len - prompt_tokens - 1
    body = {
        "model": engine.served_model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    # The tiny model on the CPU writes ~350 tokens/s into socket buffers; on a loaded machine
    # the engine can finish all of them before it notices the disconnect. Such a trial says
    # nothing about abort accounting, so it is repeated (at most 6 times, ~2 s each).
    for _attempt in range(6):
        before = _wait_for(client, lambda s: total(s, "vllm:num_requests_running") == 0)
        received = 0
        with client.stream("POST", "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    received += 1
                if received == 3:
                    break  # leaving the block closes the connection mid-stream

        def quiet(now: Samples, before: Samples = before, received: int = received) -> bool:
            return (
                total(now, "vllm:num_requests_running") == 0
                and _delta(now, before, "vllm:generation_tokens_total") >= received
            )

        after = _wait_for(client, quiet)
        while True:  # the counters and the gauge move in one stats update; confirm it
            again = _wait_for(client, quiet)
            if _delta(again, after, "vllm:generation_tokens_total") == 0:
                break
            after = again
        generated = _delta(after, before, "vllm:generation_tokens_total")
        if generated < max_tokens:
            break
    assert received <= generated < max_tokens, "the stream was not cut short"
    assert _delta(after, before, "vllm:prompt_tokens_total") == prompt_tokens
    assert _delta(after, before, "vllm:request_success_total") == 0
    assert _delta(after, before, "vllm:request_success_total", finished_reason="abort") == 0
    assert _delta(after, before, "vllm:e2e_request_latency_seconds_count") == 0
    assert _delta(after, before, "vllm:time_to_first_token_seconds_count") == 1
    assert _delta(after, before, "vllm:inter_token_latency_seconds_count") == generated - 1
    assert total(after, "vllm:num_requests_running") == 0
