"""Every PromQL expression of the Grafana dashboard names only metrics the project really
exports: the names come from scraping the REAL apps' /metrics (a collector proxying the real
simulator with the FAKE NVML standing in for absent GPUs, and the seeded throttle)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infermeter.collector.app import CollectorApp
from infermeter.collector.settings import CollectorSettings
from infermeter.dashboards.grafana.build import dashboard
from infermeter.serving.simulator.server import create_app as simulator_app
from infermeter.serving.simulator.settings import SimulatorSettings
from tests.conftest import REPO
from tests.dashboards.dashboard_helpers import Stack

GRAFANA = REPO / "dashboards" / "grafana" / "infermeter.json"
FUNCTIONS_AND_KEYWORDS = {
    "sum",
    "avg",
    "max",
    "min",
    "count",
    "rate",
    "increase",
    "irate",
    "histogram_quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "topk",
    "bottomk",
    "label_values",
    "clamp_min",
    "clamp_max",
    "abs",
}


def fake_nvml() -> ModuleType:
    """The collector tests' FAKE NVML (there is no GPU here), loaded by path."""
    if "fake_nvml" in sys.modules:
        return sys.modules["fake_nvml"]
    path = REPO / "tests" / "collector" / "fake_nvml.py"
    spec = importlib.util.spec_from_file_location("fake_nvml", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_nvml"] = module
    spec.loader.exec_module(module)
    return module


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (label matchers, ranges, grouping clauses,
    strings and function names removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name in FUNCTIONS_AND_KEYWORDS or re.fullmatch(r"\d+e\d+", name):
            continue
        names.add(name)
    return names


def expressions(doc: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for var in doc["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            found = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query["query"])
            assert found, query
            out.append(found.group(1))
    return out


def exported(text: str) -> set[str]:
    """Every series name an exposition can produce (declared families included, so a labelled
    counter that has not counted yet still counts as exported)."""
    names = {  # series as written (the parser renames DCGM's counters, which lack _total)
        m.group(1)
        for m in re.finditer(r"^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]", text, flags=re.MULTILINE)
    }
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(a_seconds_bucket{model=~"$model"}'
        '[$__rate_interval]))) / on (pool) group_left b:c{x="y(z)"} * 1048576 + DCGM_X / 3.6e9'
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b:c", "DCGM_X"}


def test_committed_json_is_what_build_generates() -> None:
    assert json.loads(GRAFANA.read_text()) == json.loads(json.dumps(dashboard()))


def test_every_promql_name_is_exported(
    serve: Callable[..., Any], stack: Stack, tmp_path: Path
) -> None:
    nvml = fake_nvml()
    nvml.reset()
    sim = serve(simulator_app(SimulatorSettings(served_model_name="tiny", time_scale=0)))
    settings = CollectorSettings.model_validate(
        {
            "upstream": sim.url,
            "spool_dir": str(tmp_path),
            "gpu_interval_s": 0.05,
            "scrape_interval_s": 0.05,
        }
    )
    collector = serve(CollectorApp(settings, nvml=nvml, telemetry=None))
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    with httpx.Client(base_url=collector.url, timeout=10) as client:
        assert client.post("/v1/chat/completions", json={**body, "stream": True}).status_code == 200
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        deadline = time.monotonic() + 10
        while True:
            text = client.get("/metrics").text
            if (
                "DCGM_FI_DEV_GPU_UTIL{" in text
                and "infermeter_engine_num_requests_running{" in text
            ):
                break
            assert time.monotonic() < deadline, "collector never exported GPU and engine series"
            time.sleep(0.05)
    names = exported(text) | exported(httpx.get(f"{stack.throttle_url}/metrics").text)
    assert "infermeter_requests_total" in names and "infermeter_throttle_decisions_total" in names
    doc = json.loads(GRAFANA.read_text())
    used: set[str] = set()
    for expr in expressions(doc):
        found = metric_names(expr)
        assert found, f"no metric in {expr!r}"
        assert found <= names, f"{expr!r} uses {sorted(found - names)}, not exported"
        used |= found
    for family in (
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_POWER_USAGE",
        "infermeter_throttle_desired_replicas",
        "infermeter_engine_kv_cache_usage_perc",
        "infermeter_time_to_first_token_seconds_bucket",
    ):
        assert family in used, family


@pytest.mark.parametrize("key", ["uid", "title", "panels", "templating"])
def test_dashboard_has_grafana_shape(key: str) -> None:
    doc = json.loads(GRAFANA.read_text())
    assert doc[key]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        if p["type"] != "row":
            assert (
                p["targets"] and p["gridPos"]["w"] > 0 and p["datasource"]["uid"] == "${datasource}"
            )
