"""The simulator's OpenAPI document is valid and names exactly its routes; 404 and 405 come
from it; a real simulator keeps to it under schemathesis; the CLI prints it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from infermeter.kernel.cli import main
from infermeter.kernel.openapi import HTTP_METHODS
from infermeter.serving.simulator.server import SimulatorApp, create_app
from infermeter.serving.simulator.settings import SimulatorSettings
from tests.conftest import ServerThread
from tests.schema_fuzz import fuzz_service

MODEL = "fuzz-llama"
# What the simulator answers, method by method (HEAD wherever GET is).
ROUTES = {
    ("/v1/completions", "post"),
    ("/v1/chat/completions", "post"),
    ("/tokenize", "post"),
    ("/v1/models", "get"),
    ("/version", "get"),
    ("/health", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
}


def _app() -> SimulatorApp:
    settings = SimulatorSettings(served_model_name=MODEL, max_model_len=1024, time_scale=0)
    return create_app(settings)


@pytest.fixture
def url(serve: Callable[..., ServerThread]) -> str:
    return serve(_app()).url


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(p, m) for p, item in doc["paths"].items() for m in item if m in HTTP_METHODS}


def test_the_document_is_valid_and_names_exactly_the_routes_served(url: str) -> None:
    doc = httpx.get(f"{url}/openapi.json").json()
    validate(doc)
    assert documented(doc) == ROUTES
    body = {"prompt": "x", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    for path, method in ROUTES:
        answer = httpx.request(method.upper(), url + path, json=body)
        assert answer.status_code == 200, (path, answer.text)
    model = doc["components"]["schemas"]["CompletionRequest"]["properties"]["model"]
    assert MODEL in model["enum"]


def test_a_wrong_method_is_405_with_allow_and_an_unknown_path_404(url: str) -> None:
    for method, path, allow in (
        ("GET", "/v1/completions", "POST"),
        ("DELETE", "/v1/models", "GET, HEAD"),
        ("POST", "/health", "GET, HEAD"),
    ):
        answer = httpx.request(method, url + path)
        assert answer.status_code == 405 and answer.headers["allow"] == allow, path
        assert answer.json()["error"]["code"] == 405
    assert httpx.head(f"{url}/v1/models").status_code == 200
    for path in ("/v1/nothing", "/v1/embeddings", "/"):
        answer = httpx.post(url + path, json={})
        assert answer.status_code == 404 and answer.json()["error"]["code"] == 404, path


def test_the_cli_prints_the_document_the_server_serves(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["engine", "simulate", "--served-model-name", MODEL, "--max-model-len", "1024"]
    assert main([*argv, "openapi"]) == 0
    assert json.loads(capsys.readouterr().out) == httpx.get(f"{url}/openapi.json").json()


def test_schemathesis_finds_nothing_on_a_real_simulator(url: str) -> None:
    doc = httpx.get(f"{url}/openapi.json").json()
    report = fuzz_service(
        doc, url, headers={}, max_examples=80, time_budget_s=300, exclude=["GET /metrics"]
    )
    print(report.summary())
    report.assert_clean(min_operations=7, min_examples=800)
    assert report.statuses[200] > 50 and report.statuses[400] > 20, report.summary()
