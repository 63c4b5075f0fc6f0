"""``infermeter dashboard``: run the Streamlit dashboards (``streamlit run dashboards/app.py``)
headless on 127.0.0.1, reading metering and throttle over their HTTP APIs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from infermeter.dashboards.settings import DashboardSettings, load_settings
from infermeter.kernel.service_auth import guard_exposure
from infermeter.kernel.settings import CONFIG_ENV, Config

APP = Path(__file__).resolve().parent / "app.py"
ENV = "INFERMETER__DASHBOARD__"
OPTIONS = (
    ("host", "--host", "bind address ([dashboard] host, default 127.0.0.1)"),
    ("port", "--port", "port ([dashboard] port, default 8501)"),
    ("metering_url", "--metering-url", "metering service ([dashboard] metering_url, "
     "default http://127.0.0.1:8200)"),
    ("throttle_url", "--throttle-url", "throttle service ([dashboard] throttle_url, "
     "default http://127.0.0.1:8300)"),
    ("read_token", "--read-token", "metering read token ([dashboard] read_token, else "
     "[metering] read_token or ingest_token)"),
    ("throttle_token", "--throttle-token", "throttle read token for tenants and autoscale "
     "([dashboard] throttle_token, else [throttle] read_token, else api_token)"),
    ("refresh_s", "--refresh-s", "default auto-refresh interval in seconds, 0 = off "
     "([dashboard] refresh_s, default 30)"),
    ("timeout_s", "--timeout-s", "timeout of each call to metering or throttle in seconds "
     "([dashboard] timeout_s, default 3)"),
)  # fmt: skip
TYPES = {"port": int, "refresh_s": int, "timeout_s": float}


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``dashboard`` command."""
    parser = subparsers.add_parser(
        "dashboard",
        parents=[common],
        help="Streamlit dashboards: fleet, costs, tenants, capacity, request lookup (port 8501)",
        description="Run the Streamlit dashboards (streamlit run, headless, usage statistics "
        "off). Pages: Fleet, Costs, Tenants, Capacity, Request lookup; each has a time-range "
        "picker, auto-refresh and CSV downloads. Data comes from the metering and throttle "
        "HTTP APIs only. Settings: the [dashboard] table; flags override it.",
    )
    for dest, flag, text in OPTIONS:
        parser.add_argument(flag, dest=dest, type=TYPES.get(dest, str), default=None, help=text)
    parser.set_defaults(func=_run)


def resolve(args: argparse.Namespace, config: Config) -> DashboardSettings:
    """The ``[dashboard]`` table with the command-line flags applied."""
    settings = load_settings(config)
    updates = {d: getattr(args, d) for d, _, _ in OPTIONS if getattr(args, d, None) is not None}
    return DashboardSettings.model_validate({**settings.model_dump(), **updates})


def streamlit_command(
    settings: DashboardSettings, config_file: str | None, environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The ``streamlit run`` argv and the environment carrying the settings to the app."""
    argv = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.headless=true",
        "--browser.gatherUsageStats=false",
        f"--server.address={settings.host}",
        f"--server.port={settings.port}",
        "--server.fileWatcherType=none",
        "--server.runOnSave=false",
        "--global.developmentMode=false",
        "--client.toolbarMode=viewer",
    ]  # fmt: skip
    env = {k: v for k, v in environ.items() if not k.startswith(ENV)}
    for key, value in settings.model_dump().items():
        env[f"{ENV}{key.upper()}"] = str(value)
    if config_file:
        env[CONFIG_ENV] = str(Path(config_file).resolve())
    return argv, env


def legacy_pages_folder(app: Path = APP) -> Path | None:
    """A ``pages/`` folder beside the entry script, if any: Streamlit would run the first
    session as a legacy multipage app, where a page's own URL is "Page not found"."""
    folder = app.parent / "pages"
    return folder if folder.exists() else None


def _run(args: argparse.Namespace, config: Config) -> int:
    legacy = legacy_pages_folder()
    if legacy is not None:
        print(
            f"infermeter dashboard: remove {legacy}: the pages live in {APP.parent / 'views'} "
            "and a pages/ folder makes Streamlit answer 'Page not found' for their URLs",
            file=sys.stderr,
        )
        return 2
    settings = resolve(args, config)
    guard_exposure(
        "dashboard",
        settings.host,
        {"login": ""},  # the app has none: off loopback it needs --insecure (an SSO proxy)
        insecure=settings.insecure or getattr(args, "insecure", False),
        log=logging.getLogger("infermeter.dashboards"),
    )
    argv, env = streamlit_command(settings, args.config, os.environ)
    print(f"infermeter dashboard: http://{settings.host}:{settings.port}", file=sys.stderr)
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
    return 0  # not reached: the process is now streamlit
