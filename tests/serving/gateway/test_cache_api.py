"""Cache hits through the HTTP API: replayed answers, metered as cache_hit with the saving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson

from infermeter.serving.gateway.embeddings.local import LocalEmbedder
from tests.conftest import wait_until
from tests.serving.gateway.gateway_helpers import (
    METERING_TOKEN,
    MODEL,
    MeteringContract,
    auth,
    gateway_app,
    gateway_settings,
    simulator_app,
)


def ask(url: str, key: str, question: str, **extra: Any) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 10,
        "temperature": 0,
        **extra,
    }
    return httpx.post(url + "/v1/chat/completions", json=body, headers=auth(key))


def test_cache_hit_is_replayed_and_metered_with_its_saving(
    serve: Callable[..., Any], embedder: LocalEmbedder, metering_contract: MeteringContract
) -> None:
    sim = serve(simulator_app())
    metering = serve(metering_contract.app())
    settings = gateway_settings(
        [sim.url],
        metering_url=metering.url,
        metering_token=METERING_TOKEN,
        cache={"enabled": True},
    )
    app = gateway_app(settings, embedder=embedder)
    gw = serve(app)
    first = ask(gw.url, "sk-acme", "How do I reset my password?")
    assert first.status_code == 200 and "x-infermeter-cache" not in first.headers
    assert app.pipeline is not None and app.pipeline.cache is not None
    cache = app.pipeline.cache
    wait_until(lambda: len(cache) == 1)  # stored off the response path
    hit = ask(gw.url, "sk-acme", "How can I reset my password?")
    assert hit.status_code == 200
    assert hit.headers["x-infermeter-cache"] == "hit"
    assert float(hit.headers["x-infermeter-cache-similarity"]) >= 0.93
    answer = first.json()["choices"][0]["message"]["content"]
    assert hit.json()["choices"][0]["message"]["content"] == answer
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert hit.json()["usage"][name] == first.json()["usage"][name]
    # Streamed, the same hit arrives as SSE.
    streamed = ask(gw.url, "sk-acme", "How can I reset my password?", stream=True)
    assert streamed.headers["x-infermeter-cache"] == "hit"
    assert streamed.text.rstrip().endswith("data: [DONE]")
    chunks = [
        orjson.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")
    ]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == answer
    # The opposite question, another tenant, or a sampled request go to the engine.
    for key, question, temperature in (
        ("sk-acme", "How do I disable my password?", 0),
        ("sk-globex", "How do I reset my password?", 0),
        ("sk-acme", "How do I reset my password?", 0.8),
    ):
        resp = ask(gw.url, key, question, temperature=temperature)
        assert resp.status_code == 200 and "x-infermeter-cache" not in resp.headers
    wait_until(lambda: sum(r.status == "cache_hit" for r in metering_contract.records) == 2)
    record = next(r for r in metering_contract.records if r.status == "cache_hit")
    usage = first.json()["usage"]
    assert record.tenant == "acme" and record.api_key_id == "key-acme"
    assert record.model == MODEL and record.replica == "cache"
    assert record.prompt_tokens == usage["prompt_tokens"]
    assert record.completion_tokens == usage["completion_tokens"]
    expected = usage["prompt_tokens"] * 1e-6 + usage["completion_tokens"] * 4e-6
    assert abs(float(record.tags["saved_usd"]) - expected) < 1e-9
    assert record.request_id == hit.headers["x-infermeter-request-id"]
