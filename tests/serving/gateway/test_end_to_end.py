"""End to end on loopback: gateway → collector → real vLLM (CPU build) and → simulator.

Every part is the real service: metering (DuckDB in a temp dir), throttle, one collector per
engine, real vLLM serving the tiny offline model, the simulator, and the gateway with the
semantic cache (real MiniLM). Shown: streaming chat through both engines with the usage
record attributed to the gateway's tenant, an over-limit tenant getting 429, an async job
delivered by SSE, and a cache hit whose saving metering reports.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from infermeter.collector.app import CollectorApp
from infermeter.collector.settings import CollectorSettings
from infermeter.metering.api import create_app as create_metering
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import MeteringSettings
from infermeter.throttle.app import Runtime
from infermeter.throttle.app import create_app as create_throttle
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.settings import ThrottleSettings
from tests.conftest import ServerThread
from tests.serving.gateway.gateway_helpers import (
    METERING_TOKEN,
    MODEL,
    auth,
    gateway_app,
    gateway_settings,
    read_sse,
    resolver,
    simulator_app,
    throttle_policy,
)

VLLM_MODEL = "tiny-llama"
READ = {"authorization": f"Bearer {METERING_TOKEN}"}
POLICY = throttle_policy([MODEL, VLLM_MODEL], tiny_per_s=3600)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@dataclass
class Stack:
    gateway: str
    metering: str
    vllm_collector: str
    sim_collector: str


@pytest.fixture(scope="module")
def stack(
    pytestconfig: pytest.Config,
    tmp_path_factory: pytest.TempPathFactory,
    embedder: Any,
    real_vllm: str,
) -> Iterator[Stack]:
    server_thread = ServerThread
    workdir = tmp_path_factory.mktemp("e2e")
    started: list[Any] = []

    def serve(app: Any) -> str:
        server = server_thread(app).start()
        started.append(server)
        return str(server.url)

    try:
        metering_settings = MeteringSettings(
            data_dir=str(workdir / "metering"),
            ingest_token=METERING_TOKEN,
            read_token=METERING_TOKEN,
            allocate_every_s=0,
        )
        (workdir / "metering").mkdir()
        metering = serve(create_metering(MeteringService(metering_settings), start_loop=False))
        runtime = Runtime(ThrottleSettings(), resolver(), policy=load_policy_text(POLICY))
        throttle = serve(create_throttle(runtime, background=False))
        sim = serve(simulator_app())

        def collector(upstream: str, pool: str, replica: str) -> str:
            settings = CollectorSettings(
                upstream=upstream,
                pool=pool,
                replica=replica,
                metering_url=metering,
                ingest_token=METERING_TOKEN,
                spool_dir=str(workdir / f"spool-{replica}"),
                batch_interval_s=0.2,
                scrape_interval_s=0.5,
                nvml=False,
            )
            return serve(CollectorApp(settings, resolver(), nvml=None, telemetry=None))

        sim_collector = collector(sim, "sim-pool", "sim-0")
        vllm_collector = collector(real_vllm, "tiny-pool", "vllm-0")
        settings = gateway_settings(
            [],
            models={
                MODEL: {"pool": "sim-pool", "replicas": [{"url": sim_collector}]},
                VLLM_MODEL: {"pool": "tiny-pool", "replicas": [{"url": vllm_collector}]},
            },
            throttle_url=throttle,
            metering_url=metering,
            metering_token=METERING_TOKEN,
            cache={"enabled": True},
        )
        gateway = serve(gateway_app(settings, embedder=embedder))
        yield Stack(gateway, metering, vllm_collector, sim_collector)
    finally:
        for server in reversed(started):
            server.stop()


def metered(stack: Stack, request_id: str, timeout: float = 15.0) -> dict[str, Any]:
    """The usage record metering stored for ``request_id`` (polls until it is there)."""
    deadline = time.monotonic() + timeout
    while True:
        resp = httpx.get(f"{stack.metering}/v1/requests/{request_id}", headers=READ)
        if resp.status_code == 200:
            body: dict[str, Any] = resp.json()
            return body
        assert time.monotonic() < deadline, f"{request_id} never reached metering: {resp.text}"
        time.sleep(0.1)


def _stream_chat(stack: Stack, model: str, key: str) -> tuple[httpx.Response, list[Any]]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 16,
        "stream": True,
    }
    pieces = []
    with httpx.stream(
        "POST", stack.gateway + "/v1/chat/completions", json=body, headers=auth(key), timeout=60
    ) as resp:
        assert resp.status_code == 200, resp.read()
        for piece in resp.iter_raw():
            pieces.append(piece)
    text = b"".join(pieces).decode()
    events = [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert text.rstrip().endswith("data: [DONE]")
    return resp, events


@pytest.mark.parametrize("model", [VLLM_MODEL, MODEL])
def test_streaming_chat_through_collector_is_metered_for_the_tenant(
    stack: Stack, model: str
) -> None:
    resp, events = _stream_chat(stack, model, "sk-acme")
    assert len(events) > 2 and all(e["choices"] for e in events)
    rid = resp.headers["x-infermeter-request-id"]
    record = metered(stack, rid)
    text = orjson.dumps(record).decode()
    assert '"acme"' in text and '"key-acme"' in text, text
    assert ("tiny-pool" if model == VLLM_MODEL else "sim-pool") in text


def test_over_limit_tenant_gets_429(stack: Stack) -> None:
    url = stack.gateway + "/v1/chat/completions"
    body = {"model": VLLM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    statuses = [httpx.post(url, json=body, headers=auth("sk-tiny")).status_code for _ in range(4)]
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    denied = httpx.post(url, json=body, headers=auth("sk-tiny"))
    assert denied.status_code == 429 and int(denied.headers["retry-after"]) >= 1
    assert denied.headers["ratelimit"] and denied.headers["ratelimit-policy"]


def test_async_job_on_real_vllm_delivered_by_sse(stack: Stack) -> None:
    job = {"model": VLLM_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 12}
    accepted = httpx.post(stack.gateway + "/v1/jobs", json=job, headers=auth("sk-acme"))
    assert accepted.status_code == 202
    events = read_sse(stack.gateway + accepted.json()["events_url"], "sk-acme")
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "done" and "delta" in kinds
    assert events[-1]["data"]["usage"]["completion_tokens"] == 12
    record = metered(stack, accepted.json()["id"] + ".1")
    assert '"acme"' in orjson.dumps(record).decode()


def test_cache_hit_saving_visible_in_metering(stack: Stack) -> None:
    url = stack.gateway + "/v1/chat/completions"

    def ask(question: str) -> httpx.Response:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 12,
            "temperature": 0,
        }
        return httpx.post(url, json=body, headers=auth("sk-globex"), timeout=30)

    first = ask("How do I rotate my API keys?")
    assert first.status_code == 200
    deadline = time.monotonic() + 10
    while True:
        hit = ask("How can I rotate my API keys?")
        if hit.headers.get("x-infermeter-cache") == "hit":
            break
        assert time.monotonic() < deadline, "the answer was never cached"
        time.sleep(0.1)
    record = metered(stack, hit.headers["x-infermeter-request-id"])
    assert '"cache_hit"' in orjson.dumps(record).decode()
    deadline = time.monotonic() + 10
    while True:
        report = httpx.get(stack.metering + "/v1/reports/cache-savings", headers=READ).json()
        rows = [r for r in report["rows"] if r["tenant"] == "globex"]
        if rows:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert rows[0]["hits"] >= 1 and rows[0]["saved_usd"] > 0
    assert rows[0]["completion_tokens"] == first.json()["usage"]["completion_tokens"]
