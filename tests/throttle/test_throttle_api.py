"""The HTTP contract on a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from infermeter.kernel.tenancy import TenantResolver, hash_key
from infermeter.throttle.app import Runtime, create_app
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.settings import ThrottleSettings
from tests.conftest import ManualClock, ServerThread, promtool_check
from tests.throttle.throttle_helpers import POLICY

SECRET = "gw-secret"
ADMIN = "admin-token"
KEY = "sk-live-tiny"

# RFC 8941 list of items: "name";param=value, ...
ITEM = r'"[a-z]+"(;[a-z][a-z0-9_.*-]*=("[^"]*"|-?\d+))*'
SF_LIST = re.compile(rf"^{ITEM}(, {ITEM})*$")


@pytest.fixture
def server() -> Iterator[tuple[ServerThread, Runtime, ManualClock]]:
    clock = ManualClock()
    resolver = TenantResolver.from_config(
        SECRET, {hash_key(KEY): {"tenant": "tiny", "key_id": "k1"}}, "anonymous"
    )
    runtime = Runtime(
        ThrottleSettings(admin_token=ADMIN),
        resolver,
        now=clock,
        policy=load_policy_text(POLICY),
    )
    with ServerThread(create_app(runtime, background=False)) as srv:
        yield srv, runtime, clock


def admit(url: str, **body: object) -> httpx.Response:
    payload = {"tenant": "t1", "model": "m", "prompt_tokens": 100, "max_tokens": 1000}
    payload.update(body)
    return httpx.post(f"{url}/v1/admit", json=payload)


def test_admit_settle_and_rate_refusal(server: tuple[ServerThread, Runtime, ManualClock]) -> None:
    srv, _, clock = server
    first = admit(srv.url)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["allowed"] is True and body["pool"] == "p1" and body["tier"] == "free"
    assert body["estimate"] == {"cost": pytest.approx(0.021), "unit": "usd"}
    assert body["lease_expires_at"] == clock() + 60
    assert SF_LIST.match(first.headers["RateLimit-Policy"]), first.headers["RateLimit-Policy"]
    assert SF_LIST.match(first.headers["RateLimit"]), first.headers["RateLimit"]
    assert '"burst";q=50000;w=5;infermeter-unit="micro-usd"' in first.headers["RateLimit-Policy"]
    assert '"concurrency";q=3;qu="concurrent-requests"' in first.headers["RateLimit-Policy"]
    second = admit(srv.url)
    assert second.status_code == 200
    third = admit(srv.url)
    assert third.status_code == 429
    refused = third.json()
    assert refused["allowed"] is False and refused["reason"] == "rate"
    assert refused["retry_after_s"] == pytest.approx(1.3, abs=1e-3)
    assert third.headers["Retry-After"] == "2"
    assert third.headers["RateLimit"].startswith('"burst";r=0;t=2')
    # settle the first: 100 prompt + 10 completion tokens -> refund of 0.0198
    settled = httpx.post(
        f"{srv.url}/v1/settle",
        json={
            "reservation_id": body["reservation_id"],
            "prompt_tokens": 100,
            "cached_prompt_tokens": 0,
            "completion_tokens": 10,
            "status": "ok",
        },
    )
    assert settled.status_code == 200, settled.text
    assert settled.json()["actual"]["cost"] == pytest.approx(0.0012)
    assert settled.json()["delta"]["cost"] == pytest.approx(-0.0198)
    assert admit(srv.url).status_code == 200  # the refund made room
    usage = httpx.get(f"{srv.url}/v1/tenants/t1/usage").json()
    assert usage["concurrency"] == {"limit": 3, "in_flight": 2}
    assert usage["daily"]["spent"] == pytest.approx(0.0432)
    assert usage["daily"]["remaining"] == pytest.approx(1.0 - 0.0432)
    assert usage["fair_share"]["p1"] == pytest.approx(0.0432)


def test_concurrency_and_budget_refusals(server: tuple[ServerThread, Runtime, ManualClock]) -> None:
    srv, _, clock = server
    assert admit(srv.url, tenant="tiny", max_tokens=0).status_code == 200
    busy = admit(srv.url, tenant="tiny", max_tokens=0)
    assert busy.status_code == 429 and busy.json()["reason"] == "concurrency"
    assert busy.headers["Retry-After"] == "60"
    assert busy.headers["RateLimit"].startswith('"concurrency";r=0')
    # budget: 1 usd per day; each admission of 40k completion tokens costs 0.8 usd
    big = admit(srv.url, tenant="rich", model="m", prompt_tokens=0, max_tokens=40_000)
    assert big.status_code == 200
    clock.advance(120)
    over = admit(srv.url, tenant="rich", model="m", prompt_tokens=0, max_tokens=40_000)
    assert over.status_code == 429
    assert (over.json()["reason"], over.json()["detail"]) == ("budget", "daily")
    assert over.headers["RateLimit-Policy"].startswith('"daily";q=1000000;w=86400')


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/admit", {"tenant": "a", "model": "m", "max_tokens": -1}, "max_tokens"),
        ("/v1/admit", {"tenant": "a", "max_tokens": 1}, "model"),
        (
            "/v1/admit",
            {"tenant": "a", "model": "m", "max_tokens": 1, "prompt_tokens": "x"},
            "prompt_tokens",
        ),
        ("/v1/settle", {"prompt_tokens": 1}, "reservation_id"),
        ("/v1/settle", {"reservation_id": "x", "prompt_tokens": 1, "status": "bogus"}, "status"),
        ("/v1/signals", {"pool": "p1"}, "replica"),
    ],
)
def test_bad_input_is_400_naming_the_field(
    server: tuple[ServerThread, Runtime, ManualClock], path: str, body: object, param: str
) -> None:
    srv, _, _ = server
    response = httpx.post(f"{srv.url}{path}", json=body)
    assert response.status_code == 400, response.text
    err = response.json()["error"]
    assert err["param"] == param and err["code"] == 400
    garbage = httpx.post(f"{srv.url}{path}", content=b"{not json")
    assert garbage.status_code == 400 and garbage.json()["error"]["param"] == "body"


def test_unknown_reservation_is_404(server: tuple[ServerThread, Runtime, ManualClock]) -> None:
    srv, _, _ = server
    r = httpx.post(f"{srv.url}/v1/settle", json={"reservation_id": "nope", "prompt_tokens": 1})
    assert r.status_code == 404 and r.json()["error"]["param"] == "reservation_id"


def test_check_endpoint_envoy_and_nginx_modes(
    server: tuple[ServerThread, Runtime, ManualClock],
) -> None:
    srv, _, _ = server
    by_key = {"authorization": f"Bearer {KEY}", "x-infermeter-model": "m"}
    ok = httpx.post(f"{srv.url}/v1/check/v1/chat/completions", headers=by_key)
    assert ok.status_code == 200 and ok.headers["x-infermeter-tenant"] == "tiny"
    assert ok.headers["x-infermeter-reservation-id"]
    envoy = httpx.get(f"{srv.url}/v1/check", headers=by_key)
    assert envoy.status_code == 429 and envoy.headers["x-infermeter-reason"] == "concurrency"
    assert envoy.headers["retry-after"] == "30"  # check_lease_s
    nginx = httpx.get(f"{srv.url}/v1/check", headers={**by_key, "x-infermeter-deny-status": "403"})
    assert nginx.status_code == 403 and "ratelimit-policy" in nginx.headers
    # a tenant header without the gateway secret is not trusted
    spoof = httpx.get(f"{srv.url}/v1/check", headers={"x-infermeter-tenant": "acme"})
    assert spoof.headers["x-infermeter-tenant"] == "anonymous"
    trusted = httpx.get(
        f"{srv.url}/v1/check",
        headers={"x-infermeter-tenant": "acme", "x-infermeter-gateway-secret": SECRET},
    )
    assert trusted.status_code == 200 and trusted.headers["x-infermeter-tenant"] == "acme"


def test_signals_autoscale_metrics_and_openapi(
    server: tuple[ServerThread, Runtime, ManualClock],
) -> None:
    srv, _, clock = server
    push = httpx.post(
        f"{srv.url}/v1/signals",
        json=[
            {
                "pool": "p1",
                "replica": f"r{i}",
                "ts": clock(),
                "num_requests_waiting": 20,
                "kv_cache_usage_perc": 0.5,
            }
            for i in range(2)
        ],
    )
    assert push.status_code == 200 and push.json() == {"accepted": 2, "pools": ["p1"]}
    keda = httpx.get(f"{srv.url}/v1/autoscale/p1")
    assert keda.status_code == 200
    assert keda.json()["desired_replicas"] == 8 and keda.json()["driver"] == "num_requests_waiting"
    assert httpx.get(f"{srv.url}/v1/autoscale/unknown").status_code == 404
    admit(srv.url)
    metrics = httpx.get(f"{srv.url}/metrics").text
    assert 'infermeter_throttle_desired_replicas{driver="num_requests_waiting",pool="p1"} 8.0' in (
        metrics
    )
    assert 'infermeter_throttle_pool_pressure{pool="p1"} 1.0' in metrics
    assert 'infermeter_throttle_decisions_total{decision="allow",reason="none"} 1.0' in metrics
    code, findings = promtool_check(metrics)
    assert code == 0, findings
    spec = httpx.get(f"{srv.url}/openapi.json").json()
    admit_schema = spec["paths"]["/v1/admit"]["post"]["requestBody"]["content"]
    assert admit_schema["application/json"]["schema"] == {"$ref": "#/components/schemas/AdmitBody"}
    assert "max_tokens" in spec["components"]["schemas"]["AdmitBody"]["properties"]
    for path in (
        "/v1/settle",
        "/v1/check",
        "/v1/signals",
        "/v1/autoscale/{pool}",
        "/v1/tenants/{tenant}/usage",
        "/v1/policy",
    ):
        assert path in spec["paths"]
    assert httpx.get(f"{srv.url}/readyz").json()["status"] == "ready"


def test_admin_policy_api(server: tuple[ServerThread, Runtime, ManualClock]) -> None:
    srv, runtime, _ = server
    auth = {"authorization": f"Bearer {ADMIN}"}
    assert httpx.get(f"{srv.url}/v1/policy").status_code == 401
    bad = POLICY.replace("rate = 0.6", "rate = -1")
    rejected = httpx.put(f"{srv.url}/v1/policy", content=bad, headers=auth)
    assert rejected.status_code == 422
    assert rejected.json()["error"]["param"] == "tiers.free.rate"
    assert runtime.policy().doc.tiers["free"].rate == 0.6
    unknown_tier = POLICY.replace('tier = "pro"', 'tier = "platinum"')
    assert (
        httpx.put(f"{srv.url}/v1/policy", content=unknown_tier, headers=auth).json()["error"][
            "param"
        ]
        == "tenants.acme.tier"
    )
    # an empty or partial body would lift every limit: refused, the old policy stays
    for partial, field in (("", "default_tier"), ("{}", "default_tier"),
                           ('default_tier = "free"', "default_tier"),  # no such tier
                           ('unit = "usd"', "default_tier")):  # fmt: skip
        refused = httpx.put(f"{srv.url}/v1/policy", content=partial, headers=auth)
        assert refused.status_code == 422, (partial, refused.text)
        assert refused.json()["error"]["param"] == field
    assert runtime.policy().doc.tiers["free"].rate == 0.6
    good = POLICY.replace("concurrency = 3", "concurrency = 1")
    applied = httpx.put(f"{srv.url}/v1/policy", content=good, headers=auth)
    assert applied.status_code == 200 and applied.json()["version"] >= 1
    assert admit(srv.url, max_tokens=0).status_code == 200
    assert admit(srv.url, max_tokens=0).json()["reason"] == "concurrency"  # new cap in force
    current = httpx.get(f"{srv.url}/v1/policy", headers=auth).json()
    assert current["policy"]["tiers"]["free"]["concurrency"] == 1


def test_fair_share_engages_with_pushed_pressure_signals() -> None:
    """Signals say the pool is saturated: the tenant far ahead waits, the light one passes."""
    clock = ManualClock()
    policy = load_policy_text(
        POLICY.replace("fair_retry_s = 2", "fair_retry_s = 2\nfair_slack = 0.05")
        .replace("rate = 0.6 ", "rate = 0 ")
        .replace("concurrency = 3", "concurrency = 0")
    )
    runtime = Runtime(ThrottleSettings(), now=clock, policy=policy)
    with ServerThread(create_app(runtime, background=False)) as srv:

        def signals(waiting: float) -> None:
            body = {"pool": "p1", "replica": "r0", "ts": clock(), "num_requests_waiting": waiting}
            assert httpx.post(f"{srv.url}/v1/signals", json=body).status_code == 200

        signals(30.0)  # saturated
        heavy = [admit(srv.url, tenant="heavy", max_tokens=1000) for _ in range(3)]
        assert all(r.status_code == 200 and r.json()["pressure"] for r in heavy)  # alone
        assert admit(srv.url, tenant="light", max_tokens=1000).status_code == 200
        refused = None
        for _ in range(10):
            r = admit(srv.url, tenant="heavy", max_tokens=1000)
            if r.status_code == 429:
                refused = r
                break
        assert refused is not None and refused.json()["reason"] == "fair_share"
        assert refused.headers["Retry-After"] == "2"
        assert admit(srv.url, tenant="light", max_tokens=1000).status_code == 200
        clock.advance(11)  # calm signals for longer than pressure_hold_s
        signals(0.0)
        calm = admit(srv.url, tenant="heavy", max_tokens=1000)
        assert calm.status_code == 200 and calm.json()["pressure"] is False
