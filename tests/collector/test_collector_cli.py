"""The ``collector`` command line: every option documented, file < flags, example config."""

from __future__ import annotations

import argparse
import tomllib

from infermeter.collector.cli import _BOOLS, _OPTIONS, register, resolver_from, settings_from
from infermeter.collector.settings import CollectorSettings
from infermeter.kernel.cli import common_options
from infermeter.kernel.settings import Config
from infermeter.kernel.tenancy import hash_key
from tests.conftest import REPO


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(parents=[common_options(top=True)])
    register(root.add_subparsers(), common_options())
    return root


def test_help_documents_every_setting() -> None:
    sub = parser()._subparsers._group_actions[0].choices["collector"]  # type: ignore[union-attr]
    text = sub.format_help()
    flags = [flag for flag, *_ in _OPTIONS] + ["--" + key.replace("_", "-") for key, _ in _BOOLS]
    for flag in flags:
        assert flag in text, flag
    for action in sub._actions:
        assert action.help, action.option_strings
    covered = {key for _, key, *_ in _OPTIONS} | {key for key, _ in _BOOLS}
    file_only = {
        "metered_paths",
        "max_tags_bytes",
        "max_body_bytes",
        "upstream_connections",
        "record_queue_size",
        "engine_metrics_path",
        "retry_initial_s",
        "retry_max_s",
        "ship_timeout_s",
        "spool_warn_fraction",
        "spool_segment_bytes",
        "overhead_header",
    }
    assert set(CollectorSettings.model_fields) <= covered | file_only


def test_flags_override_the_file() -> None:
    config = Config(
        {"collector": {"upstream": "http://file:1", "port": 9001, "force_usage": False}}
    )
    args = parser().parse_args(["collector", "--port", "9002", "--durable-ack"])
    s = settings_from(args, config)
    assert (s.upstream, s.port, s.force_usage, s.durable_ack) == (
        "http://file:1",
        9002,
        False,
        True,
    )
    args = parser().parse_args(["collector", "--force-usage", "--no-nvml"])
    s = settings_from(args, config)
    assert s.force_usage is True and s.nvml is False


def test_example_config_table_is_valid_and_complete() -> None:
    table = tomllib.loads((REPO / "infermeter.example.toml").read_text())["collector"]
    settings = CollectorSettings.model_validate(table)
    assert set(table) >= set(CollectorSettings.model_fields) - {"node"}
    assert settings.port == 8100


def test_tenancy_table_builds_the_resolver() -> None:
    config = Config(
        {
            "tenancy": {
                "shared_secret": "s",
                "default_tenant": "anon",
                "keys": {hash_key("k1"): {"tenant": "acme", "key_id": "kid"}},
            }
        }
    )
    resolver = resolver_from(config)
    who = resolver.resolve({"authorization": "Bearer k1"})
    assert (who.tenant, who.key_id) == ("acme", "kid")
    assert resolver.resolve({}).tenant == "anon"
