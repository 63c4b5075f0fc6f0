"""The gateway's OpenAI-compatible front door, against the real simulator and real throttle."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from infermeter.throttle.app import Runtime, create_app
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.settings import ThrottleSettings
from tests.conftest import free_port, promtool_check
from tests.serving.gateway.gateway_helpers import (
    MODEL,
    auth,
    gateway_app,
    gateway_settings,
    simulator_app,
    throttle_policy,
)

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}

POLICY = throttle_policy([MODEL])


def throttle_app() -> Any:
    runtime = Runtime(ThrottleSettings(), policy=load_policy_text(POLICY))
    return create_app(runtime, background=False)


def sse_data(text: str) -> list[Any]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(orjson.loads(line[6:]))
    return out


def test_missing_or_unknown_key_is_401_openai_shaped(serve: Callable[..., Any]) -> None:
    sim = serve(simulator_app())
    gw = serve(gateway_app(gateway_settings([sim.url])))
    missing = httpx.post(gw.url + "/v1/chat/completions", json=CHAT)
    unknown = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=auth("sk-nope"))
    for resp in (missing, unknown):
        assert resp.status_code == 401
        err = resp.json()["error"]
        assert err["type"] == "authentication_error" and err["code"] == 401
    assert "Missing" in missing.json()["error"]["message"]
    # A forged tenant header without the gateway secret does not authenticate either.
    forged = httpx.post(
        gw.url + "/v1/chat/completions", json=CHAT, headers={"x-infermeter-tenant": "acme"}
    )
    assert forged.status_code == 401


def test_bad_input_names_the_field(serve: Callable[..., Any]) -> None:
    sim = serve(simulator_app())
    gw = serve(gateway_app(gateway_settings([sim.url])))
    url = gw.url + "/v1/chat/completions"
    cases = [
        ({"model": MODEL}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({**CHAT, "max_tokens": "many"}, "max_tokens"),
        ({**CHAT, "stream": "yes"}, "stream"),
        ({**CHAT, "messages": [{"content": "no role"}]}, "messages[0]"),
    ]
    for body, field in cases:
        resp = httpx.post(url, json=body, headers=auth("sk-acme"))
        assert resp.status_code == 400, body
        assert resp.json()["error"]["param"] == field
    raw = httpx.post(url, content=b"{not json", headers=auth("sk-acme"))
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    unknown = httpx.post(url, json={**CHAT, "model": "nope"}, headers=auth("sk-acme"))
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"


def test_models_and_non_streamed_chat(serve: Callable[..., Any]) -> None:
    sim = serve(simulator_app())
    gw = serve(gateway_app(gateway_settings([sim.url])))
    models = httpx.get(gw.url + "/v1/models", headers=auth("sk-acme")).json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=auth("sk-acme"))
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["usage"]["completion_tokens"] > 0
    assert resp.headers["x-infermeter-request-id"]
    assert float(resp.headers["x-infermeter-overhead-ms"]) >= 0.0


def test_stream_passes_through_and_hides_injected_usage(serve: Callable[..., Any]) -> None:
    sim = serve(simulator_app())
    gw = serve(gateway_app(gateway_settings([sim.url])))
    url = gw.url + "/v1/chat/completions"
    arrivals: list[float] = []
    chunks = []
    with httpx.stream(
        "POST", url, json={**CHAT, "stream": True, "max_tokens": 16}, headers=auth("sk-acme")
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for chunk in resp.iter_raw():
            arrivals.append(time.monotonic())
            chunks.append(chunk.decode())
    text = "".join(chunks)
    events = sse_data(text)
    assert text.rstrip().endswith("data: [DONE]")
    assert all(e["choices"] for e in events), "the usage event the gateway asked for leaked"
    assert len(arrivals) > 2, "the stream was buffered into one piece"
    with httpx.stream(
        "POST",
        url,
        json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        headers=auth("sk-acme"),
    ) as resp:
        events = sse_data(resp.read().decode())
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


def test_over_limit_tenant_gets_429_with_ratelimit_headers(serve: Callable[..., Any]) -> None:
    sim = serve(simulator_app())
    thr = serve(throttle_app())
    gw = serve(gateway_app(gateway_settings([sim.url], throttle_url=thr.url)))
    url = gw.url + "/v1/chat/completions"
    statuses = []
    last = None
    for _ in range(4):
        last = httpx.post(url, json=CHAT, headers=auth("sk-tiny"))
        statuses.append(last.status_code)
    assert 200 in statuses and statuses[-1] == 429, statuses
    assert last is not None
    assert int(last.headers["retry-after"]) >= 1
    assert "ratelimit" in last.headers and "ratelimit-policy" in last.headers
    assert last.json()["error"]["type"] == "rate_limit_error"
    # Another tenant is not affected.
    assert httpx.post(url, json=CHAT, headers=auth("sk-acme")).status_code == 200


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_throttle_unreachable_fails_by_setting_and_is_counted(
    serve: Callable[..., Any], mode: str
) -> None:
    sim = serve(simulator_app())
    dead = f"http://127.0.0.1:{free_port()}"
    registry = CollectorRegistry()
    settings = gateway_settings(
        [sim.url], throttle_url=dead, throttle_failure_mode=mode, throttle_timeout_s=0.3
    )
    gw = serve(gateway_app(settings, registry=registry))
    started = time.monotonic()
    resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=auth("sk-acme"))
    assert time.monotonic() - started < 5.0
    assert resp.status_code == (200 if mode == "open" else 503)
    value = registry.get_sample_value(
        "infermeter_gateway_throttle_unreachable_total", {"call": "admit", "mode": mode}
    )
    assert value == 1.0


@pytest.mark.parametrize("token", ["", "wrong-token"])
def test_a_throttle_refusing_our_token_never_fails_open(
    serve: Callable[..., Any], token: str
) -> None:
    """A 401 from the throttle is a configuration error: the request is refused (503) even
    under the default fail-open, readiness names the token, a metric counts it; fixed by
    configuring the right token."""
    sim = serve(simulator_app())
    runtime = Runtime(ThrottleSettings(api_token="thr-secret"), policy=load_policy_text(POLICY))
    thr = serve(create_app(runtime, background=False))
    registry = CollectorRegistry()
    settings = gateway_settings([sim.url], throttle_url=thr.url, throttle_token=token)
    gw = serve(gateway_app(settings, registry=registry))
    resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=auth("sk-acme"))
    assert resp.status_code == 503, resp.text
    assert "throttle_token" in resp.json()["error"]["message"]
    assert registry.get_sample_value(
        "infermeter_gateway_dependency_auth_failures_total", {"dependency": "throttle"}
    ) == 1.0  # fmt: skip
    assert registry.get_sample_value(
        "infermeter_gateway_throttle_unreachable_total", {"call": "admit", "mode": "open"}
    ) is None  # not counted as "unreachable", not failed open  # fmt: skip
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 503 and "refused our token" in ready.json()["problems"]["throttle"]
    good = gateway_settings([sim.url], throttle_url=thr.url, throttle_token="thr-secret")
    fixed = serve(gateway_app(good))
    assert httpx.get(fixed.url + "/readyz").status_code == 200
    ok = httpx.post(fixed.url + "/v1/chat/completions", json=CHAT, headers=auth("sk-acme"))
    assert ok.status_code == 200, ok.text


def test_connect_failure_moves_to_another_replica(serve: Callable[..., Any]) -> None:
    sim = serve(simulator_app())
    dead = f"http://127.0.0.1:{free_port()}"
    app = gateway_app(gateway_settings([dead, sim.url], connect_retries=1))
    gw = serve(app)
    for _ in range(4):
        resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=auth("sk-acme"))
        assert resp.status_code == 200
    replicas = {r.url: r for r in app.routers[MODEL].replicas}
    assert replicas[dead].connect_failures >= 1
    assert all(r.outstanding == 0 for r in replicas.values())


class _Dropper:
    """A TCP server that reads a request and closes without answering; counts POSTs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if conn.recv(65536).startswith(b"POST"):
                    self.requests += 1

    def close(self) -> None:
        self.sock.close()


def test_request_that_reached_a_replica_is_never_resent(serve: Callable[..., Any]) -> None:
    a, b = _Dropper(), _Dropper()
    try:
        gw = serve(gateway_app(gateway_settings([a.url, b.url], connect_retries=3)))
        resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=auth("sk-acme"))
        assert resp.status_code == 502
        assert resp.json()["error"]["type"] == "upstream_error"
        assert a.requests + b.requests == 1
    finally:
        a.close()
        b.close()


def test_embeddings_route_is_forwarded(serve: Callable[..., Any]) -> None:
    sim = serve(simulator_app())
    gw = serve(gateway_app(gateway_settings([sim.url])))
    resp = httpx.post(
        gw.url + "/v1/embeddings", json={"model": MODEL, "input": 5}, headers=auth("sk-acme")
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "input"


def test_health_ready_metrics(serve: Callable[..., Any], pytestconfig: pytest.Config) -> None:
    sim = serve(simulator_app())
    gw = serve(
        gateway_app(gateway_settings([sim.url], throttle_url=f"http://127.0.0.1:{free_port()}"))
    )
    assert httpx.get(gw.url + "/healthz").status_code == 200
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 503 and "throttle" in ready.json()["problems"]
    httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=auth("sk-acme"))
    metrics = httpx.get(gw.url + "/metrics").text
    assert "infermeter_gateway_outstanding_requests" in metrics
    assert "infermeter_gateway_overhead_seconds_bucket" in metrics
    code, findings = promtool_check(metrics)
    assert code == 0, findings


def test_client_abort_settles_with_the_tokens_seen(serve: Callable[..., Any]) -> None:
    sim = serve(simulator_app(time_scale=20.0, output_tokens_median=1000.0))
    runtime = Runtime(ThrottleSettings(), policy=load_policy_text(POLICY))
    thr = serve(create_app(runtime, background=False))
    app = gateway_app(gateway_settings([sim.url], throttle_url=thr.url))
    gw = serve(app)
    body = {**CHAT, "stream": True, "max_tokens": 200}
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json=body, headers=auth("sk-acme")
    ) as resp:
        seen = 0
        for chunk in resp.iter_raw():
            seen += chunk.count(b"data: ")
            if seen >= 3:
                break
    # The client went away mid-stream: the reservation is settled as an abort, the
    # replica's slot is returned and the upstream request is cancelled.
    replica = app.routers[MODEL].replicas[0]
    deadline = time.monotonic() + 10
    while runtime.throttle.settles.get("client_abort", 0) < 1 or replica.outstanding:
        assert time.monotonic() < deadline, (runtime.throttle.settles, replica.outstanding)
        time.sleep(0.05)
    assert runtime.throttle.settles.get("ok", 0) == 0


def test_oversized_body_is_413(serve: Callable[..., Any]) -> None:
    sim = serve(simulator_app())
    gw = serve(gateway_app(gateway_settings([sim.url])))
    huge = b'{"model": "' + b"x" * (33 * 1024 * 1024) + b'"}'
    resp = httpx.post(gw.url + "/v1/chat/completions", content=huge, headers=auth("sk-acme"))
    assert resp.status_code == 413 and resp.json()["error"]["code"] == 413


def test_every_response_carries_a_request_id_and_the_throttled_record_uses_it(
    serve: Callable[..., Any],
) -> None:
    from tests.serving.gateway.gateway_helpers import METERING_TOKEN, MeteringContract

    contract = MeteringContract()
    metering = serve(contract.app())
    sim = serve(simulator_app())
    thr = serve(throttle_app())
    dead = f"http://127.0.0.1:{free_port()}"
    settings = gateway_settings(
        [sim.url], throttle_url=thr.url, metering_url=metering.url, metering_token=METERING_TOKEN
    )
    settings.models["unreachable"] = settings.models[MODEL].model_copy(
        update={"pool": "nowhere", "replicas": [settings.models[MODEL].replicas[0].model_copy(
            update={"url": dead, "signals_url": dead + "/metrics"})]}
    )  # fmt: skip
    gw = serve(gateway_app(settings))
    url = gw.url + "/v1/chat/completions"
    responses = {
        "200": httpx.post(url, json=CHAT, headers=auth("sk-acme")),
        "400": httpx.post(url, json={"model": MODEL}, headers=auth("sk-acme")),
        "401": httpx.post(url, json=CHAT),
        "404": httpx.post(url, json={**CHAT, "model": "nope"}, headers=auth("sk-acme")),
        "503": httpx.post(url, json={**CHAT, "model": "unreachable"}, headers=auth("sk-acme")),
        "202": httpx.post(gw.url + "/v1/jobs", json=CHAT, headers=auth("sk-acme")),
        "job404": httpx.get(gw.url + "/v1/jobs/job_nope", headers=auth("sk-acme")),
        "models": httpx.get(gw.url + "/v1/models", headers=auth("sk-acme")),
        "healthz": httpx.get(gw.url + "/healthz"),
        "metrics": httpx.get(gw.url + "/metrics"),
    }
    throttled = None
    for _ in range(6):
        resp = httpx.post(url, json=CHAT, headers=auth("sk-tiny"))
        if resp.status_code == 429:
            throttled = resp
            break
    assert throttled is not None, "the tiny tenant was never throttled"
    responses["429"] = throttled
    for name, resp in responses.items():
        if name.isdigit():
            assert resp.status_code == int(name), (name, resp.text)
        assert len(resp.headers.get_list("x-infermeter-request-id")) == 1, name
    ids = [r.headers["x-infermeter-request-id"] for r in responses.values()]
    assert len(set(ids)) == len(ids), "request ids must be unique per response"
    rid = throttled.headers["x-infermeter-request-id"]
    deadline = time.monotonic() + 10
    while not any(r.status == "throttled" for r in contract.records):
        assert time.monotonic() < deadline, "the throttled usage record never arrived"
        time.sleep(0.05)
    record = next(r for r in contract.records if r.status == "throttled")
    assert record.request_id == rid and record.tenant == "tiny" and record.http_status == 429
