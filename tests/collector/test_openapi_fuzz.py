"""The collector's OpenAPI document is valid and names its own routes and the engine routes
it meters; its own paths answer 405 with ``Allow``, other paths are the engine's; a real
collector in front of a real simulator keeps to the document under schemathesis."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from infermeter.collector.app import OWN_PATHS
from infermeter.collector.openapi import collector_openapi, signals_schema
from infermeter.collector.settings import DEFAULT_METERED_PATHS
from infermeter.kernel.cli import main
from infermeter.kernel.engine_signals import EngineSignals
from infermeter.kernel.openapi import HTTP_METHODS
from infermeter.serving.simulator.server import create_app as create_simulator
from infermeter.serving.simulator.settings import SimulatorSettings
from tests.collector.collector_helpers import RunningCollector
from tests.conftest import ServerThread, wait_until
from tests.schema_fuzz import fuzz_service

METERED = ("/v1/chat/completions", "/v1/completions")


@pytest.fixture
def collector(
    serve: Callable[..., ServerThread], make_collector: Callable[..., RunningCollector]
) -> RunningCollector:
    settings = SimulatorSettings(served_model_name="sim", max_model_len=1024, time_scale=0)
    sim = serve(create_simulator(settings))
    # The simulator serves no /v1/embeddings: the collector meters (and documents) the rest.
    return make_collector(sim.url, scrape_interval_s=0.2, metered_paths=list(METERED))


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(p, m) for p, item in doc["paths"].items() for m in item if m in HTTP_METHODS}


def test_the_document_is_valid_and_names_its_routes_and_the_metered_ones(
    collector: RunningCollector,
) -> None:
    doc = httpx.get(f"{collector.url}/openapi.json").json()
    validate(doc)
    own = {(path, "get") for path in OWN_PATHS}
    engine = {(path, "post") for path in METERED} | {("/v1/models", "get")}
    assert documented(doc) == own | engine
    assert doc == collector_openapi(METERED)
    default = collector_openapi()
    validate(default)
    assert {p for p, m in documented(default)} >= set(DEFAULT_METERED_PATHS)
    custom = collector_openapi(["/v1/responses"])
    validate(custom)
    assert "post" in custom["paths"]["/v1/responses"]
    for path in OWN_PATHS:
        assert httpx.get(collector.url + path).status_code == 200, path
        assert httpx.head(collector.url + path).status_code == 200, path
    wait_until(lambda: httpx.get(f"{collector.url}/v1/signals").json())
    signal = httpx.get(f"{collector.url}/v1/signals").json()[0]
    assert set(signal) == set(signals_schema()["properties"]) == set(EngineSignals.__slots__)


def test_own_paths_answer_405_and_other_paths_are_the_engines(collector: RunningCollector) -> None:
    for method, path in (("POST", "/healthz"), ("DELETE", "/v1/signals"), ("PUT", "/metrics")):
        answer = httpx.request(method, collector.url + path)
        assert answer.status_code == 405 and answer.headers["allow"] == "GET, HEAD", path
        assert answer.json()["error"]["code"] == 405
    # Forwarded: the engine's own routes, its 405 and its 404 (OpenAI bodies from the simulator).
    assert httpx.get(f"{collector.url}/version").json()["version"]
    wrong = httpx.get(f"{collector.url}/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    nowhere = httpx.post(f"{collector.url}/v1/nowhere", json={})
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == 404


def test_the_cli_prints_the_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["collector", "openapi"]) == 0
    assert json.loads(capsys.readouterr().out) == collector_openapi()


def test_schemathesis_finds_nothing_on_a_real_collector(collector: RunningCollector) -> None:
    doc = httpx.get(f"{collector.url}/openapi.json").json()
    report = fuzz_service(
        doc, collector.url, headers={}, max_examples=150, time_budget_s=300,
        exclude=["GET /metrics"],
    )  # fmt: skip
    print(report.summary())
    report.assert_clean(min_operations=7, min_examples=600)
    assert report.statuses[200] > 100 and report.statuses[400] > 50, report.summary()
    assert collector.records.records, "the fuzzed inference requests were metered"
