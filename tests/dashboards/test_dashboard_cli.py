"""``infermeter dashboard``: options documented, settings layered file < env < flags, tokens
falling back to the metering and throttle tables, the streamlit command line."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from infermeter.dashboards.cli import (
    APP,
    OPTIONS,
    legacy_pages_folder,
    register,
    resolve,
    streamlit_command,
)
from infermeter.dashboards.settings import DashboardSettings
from infermeter.kernel.cli import common_options
from infermeter.kernel.settings import load_config


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[common_options(top=True)])
    register(parser.add_subparsers(), common_options())
    return parser.parse_args(["dashboard", *argv])


def test_help_documents_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "infermeter.dashboards", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for _, flag, _ in OPTIONS:
        assert flag in out, flag
    assert "--config" in out and "[dashboard]" in out


def test_settings_layering_and_token_fallbacks(tmp_path: Path) -> None:
    config = tmp_path / "infermeter.toml"
    config.write_text(
        '[dashboard]\nport = 9000\nmetering_url = "http://m:1"\n'
        '[metering]\ningest_token = "ing"\n[throttle]\napi_token = "thr"\n'
    )
    env = {"INFERMETER__DASHBOARD__THROTTLE_URL": "http://t:2"}
    settings = resolve(parse(["--port", "9100"]), load_config(str(config), env))
    assert settings.port == 9100 and settings.metering_url == "http://m:1"
    assert settings.throttle_url == "http://t:2"
    assert settings.read_token == "ing" and settings.throttle_token == "thr"
    explicit = resolve(parse(["--read-token", "r"]), load_config(str(config), env))
    assert explicit.read_token == "r"


def test_invalid_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="port"):
        resolve(parse(["--port", "0"]), load_config(None, {}))


def test_streamlit_command_is_headless_on_loopback_without_usage_stats(tmp_path: Path) -> None:
    settings = DashboardSettings(port=8600, read_token="secret")
    argv, env = streamlit_command(
        settings, str(tmp_path / "c.toml"), {"PATH": "/bin", "INFERMETER__DASHBOARD__PORT": "1"}
    )
    assert argv[1:5] == ["-m", "streamlit", "run", str(APP)]
    for flag in (
        "--server.headless=true",
        "--browser.gatherUsageStats=false",
        "--server.address=127.0.0.1",
        "--server.port=8600",
    ):
        assert flag in argv
    assert "secret" not in " ".join(argv)  # tokens travel in the environment, not argv
    assert env["INFERMETER__DASHBOARD__READ_TOKEN"] == "secret"
    assert env["INFERMETER__DASHBOARD__PORT"] == "8600"
    assert env["INFERMETER_CONFIG"] == str(tmp_path / "c.toml") and env["PATH"] == "/bin"


def test_a_legacy_pages_folder_is_refused(tmp_path: Path) -> None:
    assert legacy_pages_folder() is None, "dashboards/pages/ breaks every page's own URL"
    app = tmp_path / "app.py"
    app.write_text("")
    assert legacy_pages_folder(app) is None
    (tmp_path / "pages").mkdir()
    assert legacy_pages_folder(app) == tmp_path / "pages"


def test_binding_off_loopback_without_insecure_is_refused() -> None:
    """The app has no login: off loopback it starts only with --insecure (behind an SSO
    proxy); the refusal names the setting and starts nothing."""
    out = subprocess.run(
        [sys.executable, "-m", "infermeter", "dashboard", "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "dashboard would listen on 0.0.0.0" in out.stderr and "--insecure" in out.stderr
    assert "streamlit" not in out.stderr.lower()
