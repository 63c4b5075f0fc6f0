"""A managed OpenAI-compatible upstream: key from the environment, metered by the gateway."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.serving.gateway.gateway_helpers import (
    METERING_TOKEN,
    MODEL,
    MeteringContract,
    auth,
    gateway_app,
    gateway_settings,
    simulator_app,
)


class RecordingApi:
    """The real simulator behind an ASGI wrapper that records each request's headers."""

    def __init__(self) -> None:
        self.app = simulator_app(name="upstream-name")
        self.headers: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


def test_managed_pool_is_a_configuration_change(
    serve: Callable[..., Any],
    metering_contract: MeteringContract,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_MANAGED_KEY", "sk-provider-123")
    api = RecordingApi()
    upstream = serve(api)
    metering = serve(metering_contract.app())
    settings = gateway_settings(
        [],
        models={
            MODEL: {
                "upstream": "managed",
                "base_url": upstream.url + "/v1",
                "api_key_env": "TEST_MANAGED_KEY",
                "upstream_model": "upstream-name",
            }
        },
        metering_url=metering.url,
        metering_token=METERING_TOKEN,
    )
    gw = serve(gateway_app(settings))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
    plain = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=auth("sk-acme"))
    assert plain.status_code == 200, plain.text
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json={**body, "stream": True},
        headers=auth("sk-acme"),
    ) as resp:
        streamed = resp.read().decode()
    assert streamed.rstrip().endswith("data: [DONE]")
    # The provider saw its own key and model name, and none of the internal headers.
    for seen in api.headers:
        assert seen["authorization"] == "Bearer sk-provider-123"
        assert not any(k.startswith("x-infermeter") for k in seen)
    deadline = time.monotonic() + 10
    while len(metering_contract.records) < 2:
        assert time.monotonic() < deadline, metering_contract.records
        time.sleep(0.05)
    by_stream = {r.stream: r for r in metering_contract.records}
    usage = plain.json()["usage"]
    record = by_stream[False]
    assert record.upstream == "managed" and record.status == "ok"
    assert record.tenant == "acme" and record.model == MODEL and record.replica == "managed"
    assert record.request_id == plain.headers["x-infermeter-request-id"]
    assert (record.prompt_tokens, record.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert by_stream[True].completion_tokens > 0 and by_stream[True].ttft_s is not None
