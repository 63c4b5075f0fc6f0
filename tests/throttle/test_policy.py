"""Policy validation, file reload, shared versions, metering prices, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI

from infermeter.kernel.metering_wire import parse_rates
from infermeter.throttle.errors import PolicyError
from infermeter.throttle.metering_rates import MeteringRates
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.policy_source import PolicyManager, parse_document
from infermeter.throttle.pricing import Pricer, rates_from_metering
from infermeter.throttle.storage.memory import MemoryStorage
from infermeter.throttle.storage.redis import RedisStorage
from tests.conftest import REPO, ServerThread
from tests.throttle.throttle_helpers import POLICY, redis_uri


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("rate = 0.6", "rate = -1"), "tiers.free.rate"),
        (("concurrency = 3", 'concurrency = "many"'), "tiers.free.concurrency"),
        (('default_tier = "free"', 'default_tier = "gold"'), "default_tier"),
        (('tier = "pro"', 'tier = "gold"'), "tenants.acme.tier"),
        (("max_replicas = 8", "max_replicas = 0"), "pools.p1.autoscale.max_replicas"),
        (("kv_cache_usage = 0.8", "kv_cache_usage = 2"), "pools.p1.kv_cache_usage"),
        (('unit = "usd"', 'unit = "eur"'), "unit"),
        (("weight = 1.0", "wieght = 1.0"), "tiers.free.wieght"),
    ],
)
def test_invalid_policy_names_the_field(change: tuple[str, str], field: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(POLICY.replace(*change))
    assert info.value.field == field


def test_limits_resolution_overrides_and_key_tier() -> None:
    policy = load_policy_text(POLICY)
    tiny = policy.limits_for("tiny")
    assert (tiny.tier, tiny.concurrency, tiny.rate_per_s) == ("free", 1, pytest.approx(0.01))
    assert policy.limits_for("acme").tier == "pro"
    assert policy.limits_for("someone", tier_hint="pro").tier == "pro"  # from the API key map
    assert policy.limits_for("someone", tier_hint="nope").tier == "free"
    assert policy.pool_of("m") == "p1" and policy.pool_of("other") == "default"
    assert parse_document('{"unit": "gpu_s"}').unit == "gpu_s"


async def test_file_reload_keeps_previous_on_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    manager = PolicyManager(MemoryStorage(), str(path))
    manager.load_file()
    seen: list[int] = []
    manager.subscribe(lambda p: seen.append(p.doc.tiers["free"].concurrency))
    path.write_text(POLICY.replace("concurrency = 3", "concurrency = 7"))
    os.utime(path, (1, 1))
    await manager.poll()
    assert manager.current.doc.tiers["free"].concurrency == 7 and seen == [7]
    path.write_text(POLICY.replace("concurrency = 3", "concurrency = -7"))
    os.utime(path, (2, 2))
    await manager.poll()
    assert manager.current.doc.tiers["free"].concurrency == 7  # previous stays in force
    assert manager.rejected == 1 and "tiers.free.concurrency" in manager.last_error


async def test_policy_change_reaches_every_replica_through_redis() -> None:
    uri = redis_uri()
    a_store, b_store = RedisStorage(uri), RedisStorage(uri)
    await a_store.clear()
    try:
        a, b = PolicyManager(a_store), PolicyManager(b_store)
        await a.apply(POLICY.replace("concurrency = 3", "concurrency = 9"), "admin api")
        await b.poll()
        assert b.current.doc.tiers["free"].concurrency == 9
        assert b.current.version == a.current.version
    finally:
        await a_store.clear()
        await a_store.close()
        await b_store.close()


async def test_metering_rates_replace_policy_prices_and_fall_back() -> None:
    policy = load_policy_text(POLICY)
    pricer = Pricer(policy)
    assert pricer.price("m").source == "policy"
    metering = FastAPI()

    @metering.get("/v1/rates")
    async def rates() -> dict[str, object]:
        return {
            "models": {
                "m": {
                    "usd_per_prompt_token": 2e-6,
                    "usd_per_completion_token": 8e-6,
                    "usd_per_gpu_second": 0.001,
                }
            },
            "as_of": 1,
        }

    with ServerThread(metering) as srv:
        fetcher = MeteringRates(pricer, srv.url, "tok", lambda: "usd", lambda: 5.0)
        assert await fetcher.refresh()
    price = pricer.price("m")
    assert (price.prompt, price.completion, price.source) == (2e-6, 8e-6, "metering")
    assert pricer.price("other").source == "policy"  # '*' fallback for unknown models
    down = MeteringRates(pricer, srv.url, "", lambda: "usd", lambda: 6.0, timeout_s=0.5)
    assert not await down.refresh() and down.failures == 1
    assert pricer.price("m").source == "metering"  # last good table kept
    gpu = rates_from_metering(
        parse_rates(
            {
                "models": {
                    "m": {
                        "usd_per_prompt_token": 2e-6,
                        "usd_per_completion_token": 8e-6,
                        "usd_per_gpu_second": 0.001,
                    }
                }
            }
        ),
        "gpu_s",
    )
    assert gpu["m"].completion == pytest.approx(8e-3)


def test_cli_check_policy_and_help(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(POLICY)
    bad.write_text(POLICY.replace("rate = 0.6", "rate = -1"))
    run = [sys.executable, "-m", "infermeter.throttle"]
    ok = subprocess.run([*run, "check-policy", str(good)], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0 and "valid (2 tiers" in ok.stdout
    ko = subprocess.run([*run, "check-policy", str(bad)], capture_output=True, text=True, cwd=REPO)
    assert ko.returncode == 2 and "tiers.free.rate" in ko.stderr
    helptext = subprocess.run(
        [*run, "serve", "--help"], capture_output=True, text=True, cwd=REPO
    ).stdout
    for flag in ("--storage", "--policy", "--admin-token", "--fail-closed", "--metering-url"):
        assert flag in helptext
    nginx = subprocess.run(
        [*run, "nginx-config", "--upstream", "127.0.0.1:9"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert "server 127.0.0.1:9;" in nginx.stdout and "auth_request_set" in nginx.stdout
    spec = subprocess.run([*run, "openapi"], capture_output=True, text=True, cwd=REPO)
    paths = json.loads(spec.stdout)["paths"]
    assert {"/v1/admit", "/v1/settle", "/v1/check", "/v1/signals", "/v1/autoscale/{pool}"} <= set(
        paths
    )


def test_prices_from_the_catalog_when_metering_is_absent() -> None:
    text = POLICY.replace(
        '[models."m"]\nprompt = 1.0e-5\ncompletion = 2.0e-5\npool = "p1"',
        '[models."m"]\ngpu = "h100-sxm"\nprompt_tokens_per_gpu_s = 20000\n'
        'completion_tokens_per_gpu_s = 2000\npool = "p1"',
    )
    policy = load_policy_text(text)
    from infermeter.kernel.price_catalog import load_catalog

    catalog = load_catalog()
    usd_per_s = catalog.usd_per_hour("h100-sxm") * catalog.overhead_multiplier / 3600
    price = Pricer(policy).price("m")
    assert price.source == "catalog"
    assert price.prompt == pytest.approx(usd_per_s / 20000)
    assert price.completion == pytest.approx(usd_per_s / 2000)
    gpu_s = Pricer(load_policy_text(text.replace('unit = "usd"', 'unit = "gpu_s"'))).price("m")
    assert gpu_s.completion == pytest.approx(1 / 2000)
    with pytest.raises(PolicyError) as info:
        load_policy_text(text.replace('gpu = "h100-sxm"', 'gpu = "tpu-v9"'))
    assert info.value.field == "models.m.gpu"
    with pytest.raises(PolicyError) as missing:
        load_policy_text(text.replace("prompt_tokens_per_gpu_s = 20000\n", ""))
    assert missing.value.field == "models.m"


def test_shipped_example_policy_is_valid() -> None:
    text = (REPO / "throttle" / "policy.example.toml").read_text()
    policy = load_policy_text(text)
    assert policy.limits_for("acme-batch").concurrency == 8
    assert Pricer(policy).price("meta-llama/Llama-3.1-70B-Instruct").source == "catalog"


def test_example_configuration_throttle_table_is_valid() -> None:
    from infermeter.kernel.settings import load_config
    from infermeter.throttle.settings import load

    settings, resolver = load(load_config(str(REPO / "infermeter.example.toml"), environ={}))
    assert settings.port == 8300 and settings.storage == "memory://"
    assert resolver.default_tenant
