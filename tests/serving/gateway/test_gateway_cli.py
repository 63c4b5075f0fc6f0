"""`infermeter gateway`: config table, flag overrides, help, hash-key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from infermeter.kernel.cli import build_parser
from infermeter.kernel.settings import ConfigError, load_config
from infermeter.kernel.tenancy import hash_key
from infermeter.serving.gateway.cli import resolver_from, settings_from
from infermeter.serving.gateway.settings import GatewaySettings
from tests.conftest import REPO


def test_example_config_table_validates() -> None:
    data = tomllib.loads((REPO / "infermeter.example.toml").read_text())
    settings = GatewaySettings.model_validate(data["gateway"])
    assert settings.port == 8080 and settings.jobs.queue == "memory://"
    assert settings.cache.threshold == 0.93


def test_flags_override_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[tenancy]\nshared_secret = "s"\n[tenancy.keys."'
        + hash_key("k1")
        + '"]\ntenant = "t1"\nkey_id = "id1"\n[gateway]\nport = 9000\n'
        '[gateway.models.m]\nreplicas = [{ url = "http://127.0.0.1:1" }]\n'
    )
    args = build_parser().parse_args(
        ["gateway", "--config", str(cfg), "--port", "9100", "--jobs-queue", "redis://h:1/0",
         "--cache", "--throttle-failure-mode", "closed"]
    )  # fmt: skip
    config = load_config(str(cfg), environ={})
    settings = settings_from(args, config)
    assert settings.port == 9100 and settings.jobs.queue == "redis://h:1/0"
    assert settings.cache.enabled and settings.throttle_failure_mode == "closed"
    resolver, secret = resolver_from(config)
    assert secret == "s" and resolver.lookup_key("k1") is not None
    assert resolver.lookup_key("k2") is None


def test_invalid_table_names_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[gateway.models.m]\nupstream = "self_hosted"\n')
    args = build_parser().parse_args(["gateway", "--config", str(cfg)])
    with pytest.raises(ConfigError, match=r"gateway\.models\.m"):
        settings_from(args, load_config(str(cfg), environ={}))


def test_help_documents_every_option_and_hash_key_prints_the_digest() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    gateway = sub.choices["gateway"]  # type: ignore[attr-defined]
    for action in gateway._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings
    out = subprocess.run(
        [sys.executable, "-m", "infermeter", "gateway", "hash-key", "sk-abc"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == hash_key("sk-abc")
