"""Prompt tokens of aborted streams, counted with the upstream's /tokenize
(collector/prompt_tokens.py); the real-vLLM check is in tests/collector/test_real_vllm.py."""

from __future__ import annotations

from typing import Any

import httpx

from infermeter.serving.simulator.server import create_app
from infermeter.serving.simulator.settings import SimulatorSettings
from tests.collector.collector_helpers import RunningCollector

PROMPT = "The collector counts the prompt of a stream its client abandoned " * 20


def _abort(col: RunningCollector, body: dict[str, Any], path: str) -> None:
    with httpx.stream("POST", f"{col.url}{path}", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                break


def test_aborted_stream_gets_the_engines_prompt_count(serve: Any, make_collector: Any) -> None:
    sim = serve(create_app(SimulatorSettings(time_scale=1.0, served_model_name="m")))
    col: RunningCollector = make_collector(sim.url)
    body = {"model": "m", "prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True}
    _abort(col, {**body, "stream": True}, "/v1/completions")
    (rec,) = col.records.wait(1)
    assert rec.status == "client_abort"
    whole = httpx.post(f"{sim.url}/v1/completions", json={**body, "max_tokens": 1}).json()
    assert rec.prompt_tokens == whole["usage"]["prompt_tokens"] > 100
    assert rec.tags["infermeter.prompt_tokens"] == "tokenize"
    assert rec.tags["infermeter.completion_tokens"] == "stream"
    assert rec.completion_tokens >= 1


def test_upstream_without_tokenize_keeps_zero_and_is_not_asked_again(
    engine: Any, make_collector: Any
) -> None:
    scripted, upstream = engine
    col: RunningCollector = make_collector(upstream.url)
    body = {"model": "tiny-llama", "prompt": "hello there", "max_tokens": 8, "stream": True}
    headers = {"x-test-delay-ms": "50"}
    for n in (1, 2):
        with httpx.stream(
            "POST", f"{col.url}/v1/completions", json=body, headers=headers, timeout=30
        ) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    break
        rec = col.records.wait(n)[-1]
        assert rec.status == "client_abort" and rec.prompt_tokens == 0
        assert "infermeter.prompt_tokens" not in rec.tags
    asked = [path for path, _, _ in scripted.requests if path == "/tokenize"]
    assert len(asked) == 1  # remembered as unsupported


def test_a_404_naming_the_model_does_not_turn_tokenize_off(serve: Any, make_collector: Any) -> None:
    """/tokenize answers 404 with an error body for an unknown model: that request's failure,
    not a missing route (the next aborted stream is still counted)."""
    sim = serve(create_app(SimulatorSettings(time_scale=1.0, served_model_name="m")))
    col: RunningCollector = make_collector(sim.url)
    unknown = {"model": "nope", "prompt": PROMPT, "max_tokens": 4}
    assert httpx.post(f"{col.url}/v1/completions", json=unknown).status_code == 404
    col.records.wait(1)
    body = {"model": "m", "prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    _abort(col, body, "/v1/completions")
    rec = col.records.wait(2)[-1]
    assert rec.status == "client_abort" and rec.prompt_tokens > 100, rec
    assert rec.tags["infermeter.prompt_tokens"] == "tokenize"
