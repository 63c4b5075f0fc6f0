"""FOCUS export checked by the FinOps Foundation's focus-validator (its own virtualenv)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from infermeter.kernel.price_catalog import Catalog
from infermeter.kernel.records import UsageRecord
from infermeter.metering.allocation import Allocator
from infermeter.metering.focus.export import export_focus
from infermeter.metering.ingest import Ingestor
from infermeter.metering.settings import ReplicaSettings
from infermeter.metering.store import Store
from tests.conftest import REPO
from tests.metering.conftest import T0, ingest

VENV = Path(os.environ.get("INFERMETER_FOCUS_VENV", REPO / ".venv-focus"))


def validator() -> tuple[Path, Path]:
    exe = VENV / "bin" / "focus-validator"
    if not exe.exists():
        subprocess.run(
            ["bash", str(REPO / "metering/focus/setup_validator.sh")], check=True, timeout=900
        )
    site = next((VENV / "lib").glob("python3*/site-packages"))
    return exe, site


@pytest.fixture
def allocated(store: Store, ingestor: Ingestor, catalog: Catalog) -> Store:
    records = []
    for i in range(120):
        start = T0 + timedelta(minutes=i)
        records.append(
            UsageRecord(
                f"f-{i}",
                ["acme", "globex"][i % 2],
                ["llama", "qwen"][i % 3 % 2],
                start,
                start + timedelta(seconds=30),
                replica=["r-a", "r-b"][i % 2],
                pool="gpu",
                prompt_tokens=500,
                completion_tokens=200,
                tags={"feature": "chat"},
            )
        )
    records.append(
        UsageRecord(
            "managed-1",
            "acme",
            "gpt-4o-mini",
            T0,
            T0 + timedelta(seconds=1),
            upstream="managed",
            prompt_tokens=1000,
            completion_tokens=100,
        )
    )
    ingest(ingestor, records)
    replicas = {
        "r-a": ReplicaSettings(gpu="h100-sxm", pool="gpu"),
        "r-b": ReplicaSettings(gpu="a100-80gb", mig_profile="3g.40gb", pricing="reserved"),
    }
    Allocator(store, catalog, replicas=replicas).run(T0, T0 + timedelta(hours=2))
    return store


def test_focus_csv_passes_focus_validator(allocated: Store, tmp_path: Path) -> None:
    out = tmp_path / "focus.csv"
    n = export_focus(
        allocated, T0.replace(tzinfo=None), (T0 + timedelta(hours=2)).replace(tzinfo=None), out
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == n > 0
    # one row per tenant x model x replica x hour, plus idle rows per replica-hour
    keys = [(r["SubAccountId"], r["Tags"], r["ResourceId"], r["ChargePeriodStart"]) for r in rows]
    assert len(keys) == len(set(keys))
    idle = [r for r in rows if json.loads(r["Tags"]).get("infermeter:idle") == "true"]
    assert {r["ResourceId"] for r in idle} == {"r-a", "r-b"}
    total = sum(float(r["BilledCost"]) for r in rows)
    replica_cost = allocated.connection.execute(
        "SELECT sum(cost_micro) / 1e6 FROM replica_window"
    ).fetchone()
    managed = allocated.connection.execute(
        "SELECT sum(cost_micro) / 1e6 FROM cost_hourly WHERE upstream = 'managed'"
    ).fetchone()
    assert replica_cost and managed
    assert total == pytest.approx(replica_cost[0] + managed[0], abs=0.0001 * len(rows))
    assert {r["PricingCategory"] for r in rows} == {"Standard", "Committed"}
    exe, site = validator()
    proc = subprocess.run(
        [str(exe), "--data-file", str(out), "--validate-version", "1.0"],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert " failed:" not in output, output  # no failed rule, mandatory or not
    assert "Validation succeeded." in output, output
    assert proc.returncode == 0, output


def test_focus_parquet_has_utc_timestamps(allocated: Store, tmp_path: Path) -> None:
    out = tmp_path / "focus.parquet"
    n = export_focus(
        allocated, T0.replace(tzinfo=None), (T0 + timedelta(hours=2)).replace(tzinfo=None), out
    )
    table = pq.read_table(out)
    assert table.num_rows == n
    assert str(table.schema.field("ChargePeriodStart").type) == "timestamp[us, tz=UTC]"
    exe, site = validator()
    proc = subprocess.run(
        [str(exe), "--data-file", str(out), "--validate-version", "1.0"],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "Validation succeeded." in proc.stdout + proc.stderr, proc.stdout + proc.stderr
