"""Demo traffic: seeded habits (pure) and the runner against a real gateway, throttle and
simulator on loopback, with the demo's own policy and keys."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from infermeter.kernel.errors import ConfigError
from infermeter.kernel.tenancy import TenantResolver, hash_key
from infermeter.serving.gateway.app import GatewayApp
from infermeter.serving.gateway.settings import GatewaySettings
from infermeter.serving.simulator.server import create_app as create_simulator
from infermeter.serving.simulator.settings import SimulatorSettings
from infermeter.stack.demo_habits import BATCH_SIZE, HABITS, REPEATED_QUESTIONS, Sizing, tenant_rng
from infermeter.stack.demo_stack import (
    TENANTS,
    TIERS,
    Replica,
    Secrets,
    StackLayout,
    policy_document,
)
from infermeter.stack.demo_traffic import DemoTraffic, main, require_loopback
from infermeter.throttle.app import Runtime
from infermeter.throttle.app import create_app as create_throttle
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.settings import ThrottleSettings

MODEL = "demo-llama"


def actions(habit: str, seed: int, n: int = 20, sizing: Sizing | None = None) -> list[Any]:
    rng = tenant_rng(seed, habit)
    return [HABITS[habit](rng, sizing or Sizing(MODEL)) for _ in range(n)]


@pytest.mark.parametrize("habit", sorted(HABITS))
def test_same_seed_same_traffic_other_seed_other_traffic(habit: str) -> None:
    assert actions(habit, 3) == actions(habit, 3)
    assert actions(habit, 3) != actions(habit, 4)


def test_tenant_sources_are_independent() -> None:
    assert tenant_rng(1, "acme").random() != tenant_rng(1, "globex").random()
    assert tenant_rng(1, "acme").random() == tenant_rng(1, "acme").random()


def test_habits_have_their_documented_shape() -> None:
    chatty = [a.requests[0] for a in actions("chatty", 1)]
    assert all(r.stream and r.kind == "chat" and r.body["max_tokens"] <= 64 for r in chatty)
    assert all(len(r.body["messages"][0]["content"]) < 100 for r in chatty)
    summary = actions("summaries", 1)[0].requests[0]
    assert len(summary.body["messages"][0]["content"].split()) > 1000
    batch = actions("batch", 1)
    assert all(len(a.requests) == BATCH_SIZE for a in batch)
    assert int(TIERS["free"]["concurrency"]) < BATCH_SIZE  # a burst must cross the cap
    assert all(a.requests[0].kind == "job" for a in actions("jobs", 1))
    repeats = [a.requests[0].body for a in actions("repeats", 1, n=40)]
    questions = {b["messages"][0]["content"] for b in repeats}
    assert len(questions) <= sum(len(group) for group in REPEATED_QUESTIONS) < len(repeats)
    assert all(b["temperature"] == 0 and b["max_tokens"] == 64 for b in repeats)


def test_small_context_engines_get_small_requests() -> None:
    small = Sizing(MODEL, max_model_len=512)
    for habit in HABITS:
        for action in actions(habit, 2, n=5, sizing=small):
            for request in action.requests:
                words = len(request.body["messages"][0]["content"].split())
                assert words + request.body["max_tokens"] < 512 * 0.75, (habit, words)


def test_average_pace_follows_the_rate() -> None:
    rng = random.Random(0)
    sizing = Sizing(MODEL, rate=10.0)
    delays = [HABITS["chatty"](rng, sizing).delay_s for _ in range(2000)]
    assert 1 / (10.0 * 0.35) * 0.9 < sum(delays) / len(delays) < 1 / (10.0 * 0.35) * 1.1


@pytest.mark.parametrize("url", ["http://10.0.0.5:8080", "https://api.example.com"])
def test_only_loopback_is_targeted(url: str) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        require_loopback(url)
    assert require_loopback("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"


def test_cli_refuses_a_remote_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "secrets.json"
    keys.write_text(json.dumps({"api_keys": {"acme": "k"}}))
    code = main(["--gateway", "http://192.0.2.1:8080", "--model", MODEL, "--keys", str(keys)])
    assert code == 2 and "loopback" in capsys.readouterr().err


@pytest.mark.slow
async def test_runner_through_real_gateway_throttle_and_simulator(
    tmp_path: Path, serve: Callable[..., Any]
) -> None:
    keys = Secrets.load_or_create(tmp_path / "secrets.json")
    resolver = TenantResolver.from_config(
        keys.shared_secret,
        {hash_key(keys.api_keys[t.name]): {"tenant": t.name, "tier": t.tier} for t in TENANTS},
        "anonymous",
    )
    layout = StackLayout(
        "127.0.0.1", tmp_path, MODEL, (Replica("r0", "h100-sxm", 1, 2),), 3, 4, 5, 6
    )
    policy = load_policy_text(tomli_w.dumps(policy_document(layout)))
    throttle = serve(create_throttle(Runtime(ThrottleSettings(), resolver, policy=policy)))
    simulator = serve(create_simulator(SimulatorSettings(
        served_model_name=MODEL, time_scale=0.05, output_tokens_median=32)))  # fmt: skip
    settings = GatewaySettings.model_validate({
        "throttle_url": throttle.url, "signal_poll_s": 0.5,
        "models": {MODEL: {"pool": layout.pool, "replicas": [{"url": simulator.url}]}},
    })  # fmt: skip
    gateway = serve(GatewayApp(settings, resolver, shared_secret=keys.shared_secret))
    traffic = DemoTraffic(gateway.url, keys.api_keys, Sizing(MODEL, rate=20.0), seed=5)
    stop = asyncio.Event()
    runner = asyncio.create_task(traffic.run(stop, drain_s=5.0))
    for _ in range(200):  # at most 20 s
        await asyncio.sleep(0.1)
        stats = traffic.stats
        if (
            stats["initech"].throttled
            and stats["umbrella"].jobs_done
            and all(s.statuses.get("200") for name, s in stats.items() if name != "umbrella")
        ):
            break
    stop.set()
    await asyncio.wait_for(runner, timeout=15)
    stats = traffic.stats
    assert stats["initech"].throttled > 0, stats["initech"]  # the free tier's cap
    assert stats["acme"].throttled == 0 and stats["globex"].throttled == 0
    assert stats["umbrella"].jobs_done > 0 and stats["umbrella"].job_ids[0].endswith(".1")
    assert all(s.errors == 0 for s in stats.values()), traffic.summary()
    for name, tenant in stats.items():
        answered = sum(n for code, n in tenant.statuses.items() if code in ("200", "429"))
        if name != "umbrella":
            # every 200 carries its request id (the gateway sends none with a 429 today)
            assert tenant.statuses["200"] <= len(tenant.metered_ids) <= answered, name
    data = traffic.to_json()
    assert set(data["tenants"]) == {t.name for t in TENANTS}
    assert json.loads(json.dumps(data)) == data
