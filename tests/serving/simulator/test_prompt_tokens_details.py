"""``--enable-prompt-tokens-details``: usage reports prefix-cache hits, as vLLM does with it."""

from __future__ import annotations

import asyncio
import json

import httpx

from infermeter.serving.simulator.server import create_app
from infermeter.serving.simulator.settings import SimulatorSettings

PROMPT = "You are the billing assistant of a large cloud provider. " * 40


def _usages(enabled: bool) -> list[dict[str, object]]:
    app = create_app(SimulatorSettings(time_scale=0.0, enable_prompt_tokens_details=enabled))

    async def go() -> list[dict[str, object]]:
        transport = httpx.ASGITransport(app=app)
        out = []
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            for stream in (False, True):
                body = {
                    "model": app.served, "prompt": PROMPT, "max_tokens": 3, "stream": stream,
                    "stream_options": {"include_usage": True} if stream else None,
                }  # fmt: skip
                resp = await client.post("/v1/completions", json=body)
                if stream:
                    frames = [f for f in resp.text.split("\n\n") if '"choices":[]' in f]
                    out.append(json.loads(frames[0][len("data: ") :])["usage"])
                else:
                    out.append(resp.json()["usage"])
        return out

    return asyncio.run(go())


def test_cached_tokens_reported_only_when_enabled() -> None:
    first, second = _usages(True)
    assert first["prompt_tokens_details"] == {"cached_tokens": 0}  # nothing cached yet
    details = second["prompt_tokens_details"]
    assert isinstance(details, dict) and 0 < details["cached_tokens"] < second["prompt_tokens"]
    plain, streamed = _usages(False)
    assert plain["prompt_tokens_details"] is None and "prompt_tokens_details" not in streamed
