"""Signals you can trust: the signals token, bounded clock skew, staleness, eviction, caps.

A spoofed (no token) or far-future-dated ``POST /v1/signals`` must not move
``desired_replicas``; pools that went quiet are forgotten; tables are bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from infermeter.throttle.app import Runtime, create_app
from infermeter.throttle.errors import LimitReached, RequestError
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.settings import ThrottleSettings
from infermeter.throttle.signals import PoolMonitor, SignalLimits
from infermeter.throttle.storage.base import Storage
from tests.conftest import ManualClock, ServerThread
from tests.throttle.throttle_helpers import POLICY

SIGNALS = "signals-token"
DECISIONS = "decisions-token"


def sample(clock: ManualClock, replica: str = "r0", pool: str = "p1", **extra: float) -> dict:
    body: dict = {"pool": pool, "replica": replica, "ts": clock(), "num_requests_running": 4}
    body.update({"num_requests_waiting": 1.0, "kv_cache_usage_perc": 0.3})
    body.update(extra)
    return body


@pytest.fixture
def throttle() -> Iterator[tuple[str, ManualClock]]:
    clock = ManualClock()
    settings = ThrottleSettings(api_token=DECISIONS, signals_token=SIGNALS)
    runtime = Runtime(settings, now=clock, policy=load_policy_text(POLICY))
    with ServerThread(create_app(runtime, background=False)) as srv:
        yield srv.url, clock


def desired(url: str) -> int:
    reply = httpx.get(f"{url}/v1/autoscale/p1", headers={"authorization": f"Bearer {DECISIONS}"})
    assert reply.status_code == 200, reply.text
    return int(reply.json()["desired_replicas"])


def push(url: str, body: object, token: str | None = SIGNALS) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/v1/signals", json=body, headers=headers)


def test_a_spoofed_or_future_dated_signal_cannot_move_desired_replicas(
    throttle: tuple[str, ManualClock],
) -> None:
    url, clock = throttle
    assert push(url, sample(clock)).status_code == 200
    before = desired(url)
    assert before == 1
    flood = sample(clock, replica="evil", num_requests_waiting=50.0)
    for token in (None, "guess", DECISIONS):  # no token, a wrong one, another scope's
        refused = push(url, flood, token)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["param"] == "authorization"
    future = sample(clock, replica="evil", num_requests_waiting=50.0, ts=clock() + 10 * 86400)
    late = push(url, [sample(clock), future])
    assert late.status_code == 422, late.text
    assert late.json()["error"]["param"] == "[1].ts"
    assert desired(url) == before
    # what the throttle refused is visible
    text = httpx.get(f"{url}/metrics").text
    assert "infermeter_throttle_signals_refused_total 2.0" in text


def test_reads_need_a_token_once_the_throttle_has_one(throttle: tuple[str, ManualClock]) -> None:
    url, _ = throttle
    for path in ("/v1/autoscale/p1", "/v1/autoscale", "/v1/tenants"):
        assert httpx.get(url + path).status_code == 401, path
    # the signals token is for pushing only
    assert httpx.get(url + "/v1/autoscale", headers={"authorization": f"Bearer {SIGNALS}"}
                     ).status_code == 401  # fmt: skip
    check = httpx.get(url + "/v1/check")  # a proxy's subrequest sends X-Infermeter-Token
    assert check.status_code == 401 and check.json()["error"]["param"] == "x-infermeter-token"
    ok = httpx.get(url + "/v1/check", headers={"x-infermeter-token": DECISIONS})
    assert ok.status_code == 200, ok.text


def monitor(clock: ManualClock, storage: Storage, **limits: float) -> PoolMonitor:
    policy = load_policy_text(POLICY)
    return PoolMonitor(lambda: policy, storage, clock, SignalLimits(**limits))  # type: ignore[arg-type]


async def test_skew_is_bounded_both_ways(backend: Storage) -> None:
    clock = ManualClock()
    m = monitor(clock, backend, max_skew_s=30)
    await m.ingest(sample(clock, ts=clock() - 29))
    with pytest.raises(RequestError, match="ts"):
        await m.ingest(sample(clock, ts=clock() + 31))
    with pytest.raises(RequestError, match="ts"):
        await m.ingest(sample(clock, ts=clock() - 31))


async def test_a_replica_stops_counting_when_its_samples_go_stale(backend: Storage) -> None:
    clock = ManualClock()
    m = monitor(clock, backend)
    await m.ingest([sample(clock, "r0"), sample(clock, "r1")])
    assert (await m.refresh("p1")).replicas == 2
    stale_after = load_policy_text(POLICY).pool("p1").stale_after_s
    clock.advance(stale_after / 2)
    await m.ingest(sample(clock, "r0"))
    clock.advance(stale_after / 2 + 1)
    assert (await m.refresh("p1")).replicas == 1


async def test_an_undeclared_pool_is_forgotten_after_it_goes_idle(backend: Storage) -> None:
    clock = ManualClock()
    m = monitor(clock, backend, evict_after_s=600)
    await m.ingest([sample(clock, pool="p1"), sample(clock, pool="ephemeral")])
    assert set(await m.known_pools()) >= {"p1", "ephemeral"}
    clock.advance(300)
    await m.refresh_all()
    assert "ephemeral" in await m.known_pools()  # idle, not yet past evict_after_s
    clock.advance(301)
    await m.refresh_all()
    pools = await m.known_pools()
    assert "ephemeral" not in pools and "ephemeral" not in await backend.pools()
    assert "p1" in pools  # the policy names it: kept, with zero replicas
    assert m.evicted == 1


async def test_pools_and_replicas_are_capped(backend: Storage) -> None:
    clock = ManualClock()
    m = monitor(clock, backend, max_pools=2, max_replicas_per_pool=3)
    await m.ingest([sample(clock, f"r{i}") for i in range(3)])
    with pytest.raises(LimitReached, match="replica"):
        await m.ingest(sample(clock, "r3"))
    await m.ingest(sample(clock, "r2"))  # a known replica may report again
    await m.ingest(sample(clock, "r0", pool="p2"))
    with pytest.raises(LimitReached, match="pool"):
        await m.ingest(sample(clock, "r0", pool="p3"))
    assert m.refused == 2


def test_oversized_bodies_are_413_naming_the_limit(throttle: tuple[str, ManualClock]) -> None:
    url, clock = throttle
    huge = b"[" + b",".join([b'{"pool":"p1","replica":"r0"}'] * 60_000) + b"]"
    assert len(huge) > 1024 * 1024
    for path in ("/v1/signals", "/v1/admit"):
        reply = httpx.post(url + path, content=huge, headers={"authorization": f"Bearer {SIGNALS}"})
        assert reply.status_code == 413, (path, reply.text)
        assert reply.json()["error"]["param"] == "body" and "1048576" in reply.text
    assert push(url, sample(clock)).status_code == 200  # the replayed small body still works


def test_a_wrong_method_is_405_with_allow(throttle: tuple[str, ManualClock]) -> None:
    url, _ = throttle
    reply = httpx.delete(url + "/v1/signals")
    assert reply.status_code == 405 and reply.headers["allow"] == "POST"
    assert reply.json()["error"]["code"] == 405
