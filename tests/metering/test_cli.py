"""``infermeter metering report|export-focus|allocate`` as a user runs them."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import orjson

from infermeter.kernel.cli import build_parser
from infermeter.kernel.records import UsageRecord
from infermeter.metering.api import create_app
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import MeteringSettings, ReplicaSettings
from tests.conftest import REPO, ManualClock, ServerThread
from tests.metering.conftest import T0

SINCE, UNTIL = "2026-11-02T00:00:00Z", "2026-11-02T02:00:00Z"


def run(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--config", str(config)] if config else []
    return subprocess.run(
        [sys.executable, "-m", "infermeter.metering", *args, *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def populate(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "infermeter.toml"
    db = tmp_path / "m.duckdb"
    config.write_text(
        f'[metering]\nstorage = "duckdb:///{db}"\n\n[metering.replicas.r1]\ngpu = "l40s"\n'
        'pool = "gpu"\n'
    )
    settings = MeteringSettings(
        storage=f"duckdb:///{db}", replicas={"r1": ReplicaSettings(gpu="l40s", pool="gpu")}
    )
    service = MeteringService(settings, now=ManualClock(T0.timestamp() + 7200))
    records = []
    for i in range(30):
        start = T0 + timedelta(minutes=2 * i)
        records.append(
            UsageRecord(
                f"c-{i}",
                ["acme", "globex"][i % 2],
                "llama",
                start,
                start + timedelta(seconds=40),
                replica="r1",
                prompt_tokens=800,
                completion_tokens=120,
                tags={"feature": ["chat", "search"][i % 3 % 2]},
            ).to_json()
        )
    assert service.ingestor.usage(orjson.dumps(records)).accepted == 30
    service.stop()
    return config, db


def test_report_and_export_from_a_store_file(tmp_path: Path) -> None:
    config, db = populate(tmp_path)
    alloc = run("allocate", "--since", SINCE, "--until", UNTIL, config=config)
    assert alloc.returncode == 0, alloc.stderr
    report = run(
        "report",
        "--by",
        "tenant",
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "--storage",
        f"duckdb:///{db}",
        "--granularity",
        "total",
        config=config,
    )
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert lines[0].split()[:3] == ["bucket", "tenant", "requests"]
    body = "\n".join(lines)
    assert "acme" in body and "globex" in body and "replica (idle)" in body and "r1" in body
    by_feature = run(
        "report",
        "--by",
        "feature",
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "--storage",
        f"duckdb:///{db}",
        config=config,
    )
    assert "search" in by_feature.stdout and "chat" in by_feature.stdout
    out = tmp_path / "focus.csv"
    export = run(
        "export-focus",
        "--out",
        str(out),
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "--storage",
        f"duckdb:///{db}",
        config=config,
    )
    assert export.returncode == 0, export.stderr
    rows = list(csv.DictReader(out.open()))
    assert {r["SubAccountId"] for r in rows} == {"acme", "globex", ""}


def test_report_over_http(tmp_path: Path, serve: Callable[..., ServerThread]) -> None:
    _config, db = populate(tmp_path)
    settings = MeteringSettings(
        storage=f"duckdb:///{db}",
        read_token="r",
        replicas={"r1": ReplicaSettings(gpu="l40s")},
        allocate_every_s=0,
    )
    service = MeteringService(settings, now=ManualClock(T0.timestamp() + 7200))
    try:
        service.allocate(T0, T0 + timedelta(hours=2))
        url = serve(create_app(service)).url
        ok = run(
            "report",
            "--url",
            url,
            "--token",
            "r",
            "--by",
            "model",
            "--since",
            SINCE,
            "--until",
            UNTIL,
        )
        assert ok.returncode == 0, ok.stderr
        assert "llama" in ok.stdout
        denied = run("report", "--url", url, "--token", "wrong", "--since", SINCE)
        assert denied.returncode == 2 and "401" in denied.stderr
    finally:
        service.stop()


def test_every_option_is_documented() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    metering = sub.choices["metering"]  # type: ignore[attr-defined]
    inner = next(a for a in metering._actions if a.dest == "metering_command")
    assert set(inner.choices) == {"serve", "report", "export-focus", "allocate"}
    for name, cmd in inner.choices.items():
        for action in cmd._actions:
            assert action.help, f"metering {name} {action.option_strings} has no help"
