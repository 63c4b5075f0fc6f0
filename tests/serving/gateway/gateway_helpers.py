"""Helpers of the gateway tests: keys, simulator/gateway builders, a metering contract server.

``MeteringContract`` is a small loopback server implementing metering's documented
``POST /v1/usage`` / ``GET /v1/rates`` contract with the real record validation of
``infermeter.kernel.records``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infermeter.kernel.records import UsageRecord, parse_usage_record
from infermeter.kernel.tenancy import KeyEntry, TenantResolver, hash_key
from infermeter.serving.gateway.app import GatewayApp
from infermeter.serving.gateway.settings import GatewaySettings
from infermeter.serving.simulator.server import create_app as create_simulator
from infermeter.serving.simulator.settings import SimulatorSettings

SECRET = "gateway-test-secret"
KEYS = {
    "sk-acme": KeyEntry("acme", "key-acme", "pro"),
    "sk-globex": KeyEntry("globex", "key-globex", "free"),
    "sk-tiny": KeyEntry("tiny", "key-tiny", "tiny"),
}
MODEL = "sim-llama"
METERING_TOKEN = "metering-test-token"


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def throttle_policy(models: list[str], tiny_per_s: int = 60) -> str:
    """A throttle policy: tier ``pro`` (ample) for everyone, tier ``tiny`` (refuses almost
    everything) for tenant ``tiny``; cheap per-token prices for ``models``."""
    prices = "".join(f'[models."{m}"]\nprompt = 1.0e-8\ncompletion = 1.0e-7\n' for m in models)
    return f"""
unit = "usd"
default_tier = "pro"
[tiers.pro]
rate = 1000.0
per_s = 60
burst = 1000.0
[tiers.tiny]
rate = 0.000001
per_s = {tiny_per_s}
burst = 0.0000015
[tenants.tiny]
tier = "tiny"
{prices}"""


def resolver() -> TenantResolver:
    return TenantResolver(SECRET, {hash_key(k): v for k, v in KEYS.items()})


def simulator_app(name: str = MODEL, time_scale: float = 1.0, **kw: Any) -> Any:
    settings = SimulatorSettings(
        model="llama-3.1-8b",
        served_model_name=name,
        gpu="h100-sxm",
        time_scale=time_scale,
        output_tokens_median=kw.pop("output_tokens_median", 24.0),
        **kw,
    )
    return create_simulator(settings)


def gateway_settings(replica_urls: list[str], **overrides: Any) -> GatewaySettings:
    data: dict[str, Any] = {
        "signal_poll_s": 0.2,
        # Each gateway its own usage spool (a shared one is locked, and would replay records).
        "spool_dir": tempfile.mkdtemp(prefix="infermeter-gw-spool-"),
        "models": {
            MODEL: {
                "replicas": [{"url": u, "signals_url": u + "/metrics"} for u in replica_urls],
                "job_concurrency": 2,
            }
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict) and key != "models":
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return GatewaySettings.model_validate(data)


def gateway_app(settings: GatewaySettings, **kw: Any) -> GatewayApp:
    return GatewayApp(settings, resolver(), shared_secret=SECRET, **kw)


@dataclass
class MeteringContract:
    """Records received by the contract metering server, and the rates it quotes."""

    records: list[UsageRecord] = field(default_factory=list)
    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    posts: int = 0

    def app(self) -> Starlette:
        async def usage(request: Request) -> Response:
            if request.headers.get("authorization") != f"Bearer {METERING_TOKEN}":
                return Response(b'{"error":"unauthorized"}', 401)
            self.posts += 1
            accepted = 0
            for obj in orjson.loads(await request.body()):
                self.records.append(parse_usage_record(obj))
                accepted += 1
            return Response(orjson.dumps({"accepted": accepted, "duplicates": 0, "rejected": []}))

        async def rates(request: Request) -> Response:
            return Response(orjson.dumps({"models": self.rates, "as_of": 0}))

        async def healthz(request: Request) -> Response:
            return Response(b'{"status":"ok"}')

        return Starlette(
            routes=[
                Route("/v1/usage", usage, methods=["POST"]),
                Route("/v1/rates", rates, methods=["GET"]),
                Route("/healthz", healthz, methods=["GET"]),
            ]
        )


def read_sse(url: str, key: str, last_event_id: str | None = None) -> list[dict[str, Any]]:
    """Every event of a job's stream until done/failed: [{id, event, data}]."""
    headers = auth(key)
    if last_event_id is not None:
        headers["last-event-id"] = last_event_id
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with httpx.stream("GET", url, headers=headers, timeout=30.0) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("id: "):
                current["id"] = line[4:]
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = orjson.loads(line[6:])
            elif line == "" and "event" in current:
                events.append(current)
                current = {}
    return events
