"""Async jobs end to end on loopback: 202 at once, SSE delivery and resume, throttle waits."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from infermeter.throttle.app import Runtime, create_app
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.settings import ThrottleSettings
from tests.serving.gateway.gateway_helpers import (
    MODEL,
    auth,
    gateway_app,
    gateway_settings,
    read_sse,
    simulator_app,
)

JOB = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Write a haiku."}],
    "max_tokens": 12,
}


def test_job_acknowledged_at_once_and_delivered_by_sse(serve: Callable[..., Any]) -> None:
    sim = serve(simulator_app(time_scale=5.0, output_tokens_median=1000.0))
    gw = serve(gateway_app(gateway_settings([sim.url])))
    started = time.monotonic()
    resp = httpx.post(gw.url + "/v1/jobs", json=JOB, headers=auth("sk-acme"))
    accepted_in = time.monotonic() - started
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status"] == "queued" and body["id"].startswith("job_")
    assert resp.headers["location"] == body["status_url"] == f"/v1/jobs/{body['id']}"
    assert accepted_in < 1.0
    events = read_sse(gw.url + body["events_url"], "sk-acme")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "done"
    deltas = [e["data"]["text"] for e in events if e["event"] == "delta"]
    assert len(deltas) >= 2
    done = events[-1]["data"]
    assert done["usage"]["completion_tokens"] == 12
    status = httpx.get(gw.url + body["status_url"], headers=auth("sk-acme")).json()
    assert status["status"] == "succeeded" and status["attempts"] == 1
    assert status["result"]["choices"][0]["message"]["content"] == "".join(deltas)
    assert status["usage"] == done["usage"]
    # Reconnecting with Last-Event-ID resumes exactly after that event.
    resumed = read_sse(gw.url + body["events_url"], "sk-acme", last_event_id=events[1]["id"])
    assert [e["id"] for e in resumed] == [e["id"] for e in events[2:]]
    # Another tenant cannot see the job; a malformed event id is a 400.
    other = httpx.get(gw.url + body["status_url"], headers=auth("sk-globex"))
    assert other.status_code == 404
    bad = httpx.get(gw.url + body["events_url"], headers={**auth("sk-acme"), "last-event-id": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Last-Event-ID"


def test_job_validation(serve: Callable[..., Any]) -> None:
    sim = serve(simulator_app())
    gw = serve(gateway_app(gateway_settings([sim.url])))
    url = gw.url + "/v1/jobs"
    assert httpx.post(url, json=JOB).status_code == 401
    no_kind = httpx.post(url, json={"model": MODEL}, headers=auth("sk-acme"))
    assert no_kind.status_code == 400 and no_kind.json()["error"]["param"] == "messages"
    bad_model = httpx.post(url, json={**JOB, "model": "nope"}, headers=auth("sk-acme"))
    assert bad_model.status_code == 404
    missing = httpx.get(url + "/job_missing", headers=auth("sk-acme"))
    assert missing.status_code == 404


def test_a_tenant_over_its_job_cap_gets_429_naming_the_setting(
    serve: Callable[..., Any],
) -> None:
    sim = serve(simulator_app())
    gw = serve(gateway_app(gateway_settings([sim.url], max_jobs_per_tenant=2), run_workers=False))
    url = gw.url + "/v1/jobs"
    for _ in range(2):
        assert httpx.post(url, json=JOB, headers=auth("sk-acme")).status_code == 202
    over = httpx.post(url, json=JOB, headers=auth("sk-acme"))
    assert over.status_code == 429, over.text
    error = over.json()["error"]
    assert error["param"] == "max_jobs_per_tenant" and error["type"] == "rate_limit_error"
    assert httpx.post(url, json=JOB, headers=auth("sk-globex")).status_code == 202


POLICY = f"""
unit = "usd"
default_tier = "pro"
[tiers.pro]
rate = 1000.0
per_s = 60
burst = 1000.0
[tiers.tiny]
rate = 0.000002
per_s = 1
burst = 0.000002
[tiers.frozen]
rate = 0.000000001
per_s = 3600
burst = 0.000002
[tenants.tiny]
tier = "tiny"
[tenants.acme]
tier = "frozen"
[models."{MODEL}"]
prompt = 1.0e-8
completion = 1.0e-7
"""


def test_over_limit_job_waits_for_the_throttle(serve: Callable[..., Any]) -> None:
    sim = serve(simulator_app())
    runtime = Runtime(ThrottleSettings(), policy=load_policy_text(POLICY))
    thr = serve(create_app(runtime, background=False))
    settings = gateway_settings([sim.url], throttle_url=thr.url, jobs={"deadline_s": 20.0})
    gw = serve(gateway_app(settings))
    job = {**JOB, "max_tokens": 15}
    ids = [
        httpx.post(gw.url + "/v1/jobs", json=job, headers=auth("sk-tiny")).json()["id"]
        for _ in range(3)
    ]
    all_events = [read_sse(f"{gw.url}/v1/jobs/{i}/events", "sk-tiny") for i in ids]
    assert all(events[-1]["event"] == "done" for events in all_events)
    waited = [e for events in all_events for e in events if e["event"] == "throttled"]
    assert waited, "no job had to wait although the tenant was over its limit"
    assert all(e["data"]["retry_after_s"] > 0 for e in waited)


def test_job_fails_when_still_throttled_at_its_deadline(serve: Callable[..., Any]) -> None:
    sim = serve(simulator_app())
    runtime = Runtime(ThrottleSettings(), policy=load_policy_text(POLICY))
    thr = serve(create_app(runtime, background=False))
    settings = gateway_settings([sim.url], throttle_url=thr.url, jobs={"deadline_s": 1.0})
    gw = serve(gateway_app(settings))
    job = {**JOB, "max_tokens": 15}
    first = httpx.post(gw.url + "/v1/jobs", json=job, headers=auth("sk-acme")).json()
    assert read_sse(gw.url + first["events_url"], "sk-acme")[-1]["event"] == "done"
    second = httpx.post(gw.url + "/v1/jobs", json=job, headers=auth("sk-acme")).json()
    events = read_sse(gw.url + second["events_url"], "sk-acme")
    assert events[-1]["event"] == "failed"
    assert "deadline" in events[-1]["data"]["error"]
    status = httpx.get(gw.url + second["status_url"], headers=auth("sk-acme")).json()
    assert status["status"] == "failed"


def test_job_concurrency_per_pool(serve: Callable[..., Any]) -> None:
    sim = serve(simulator_app(time_scale=1.0, output_tokens_median=1000.0))
    settings = gateway_settings([sim.url])
    settings.models[MODEL].job_concurrency = 1
    gw = serve(gateway_app(settings))
    ids = [
        httpx.post(gw.url + "/v1/jobs", json=JOB, headers=auth("sk-acme")).json()["id"]
        for _ in range(2)
    ]
    for job_id in ids:
        assert read_sse(f"{gw.url}/v1/jobs/{job_id}/events", "sk-acme")[-1]["event"] == "done"
    first, second = (
        httpx.get(f"{gw.url}/v1/jobs/{i}", headers=auth("sk-acme")).json() for i in ids
    )
    # One worker for the pool: the second job started only after the first finished.
    assert second["started_at"] >= first["finished_at"]
