"""The gateway's OpenAPI document is valid and names exactly its routes; 404 and 405 are
OpenAI error bodies; a real gateway (API keys on, a real throttle, metering and simulator
behind it) keeps to the document under schemathesis; the CLI prints it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from infermeter.kernel.cli import main
from infermeter.kernel.openapi import HTTP_METHODS
from infermeter.serving.gateway.api import ROUTES
from infermeter.serving.gateway.front import PATHS
from infermeter.serving.gateway.openapi import gateway_openapi
from tests.conftest import ServerThread
from tests.schema_fuzz import fuzz_service
from tests.serving.gateway.gateway_helpers import (
    METERING_TOKEN,
    MODEL,
    MeteringContract,
    auth,
    gateway_app,
    gateway_settings,
    simulator_app,
)
from tests.serving.gateway.test_gateway_api import throttle_app

KEY = "sk-acme"
AUTH = {"Authorization": f"Bearer {KEY}"}  # so cased: schemathesis drops it to test auth


@pytest.fixture
def url(serve: Callable[..., ServerThread], metering_contract: MeteringContract) -> str:
    sim = serve(simulator_app(time_scale=0.0, max_model_len=1024))
    throttle = serve(throttle_app())
    metering = serve(metering_contract.app())
    settings = gateway_settings(
        [sim.url], throttle_url=throttle.url, metering_url=metering.url,
        metering_token=METERING_TOKEN,
    )  # fmt: skip
    return serve(gateway_app(settings)).url


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(p, m) for p, item in doc["paths"].items() for m in item if m in HTTP_METHODS}


def test_the_document_is_valid_and_names_exactly_the_routes_served(url: str) -> None:
    doc = httpx.get(f"{url}/openapi.json").json()
    validate(doc)
    served = {(path, method.lower()) for path, _name, method in ROUTES}
    served |= {(path, "post") for path in PATHS}
    assert documented(doc) == served
    assert doc["components"]["schemas"]["ChatRequest"]["properties"]["model"]["enum"] == [MODEL]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            secured = op["security"] == [{"bearer": []}]
            assert secured == path.startswith("/v1/"), (path, method)
            assert not secured or "401" in op["responses"], (path, method)
    validate(gateway_openapi())  # without models too


def test_a_wrong_method_is_405_with_allow_and_an_unknown_path_404(url: str) -> None:
    for method, path, allow in (
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/embeddings", "POST"),
        ("DELETE", "/v1/models", "GET, HEAD"),
        ("POST", "/v1/jobs/job_x", "GET, HEAD"),
        ("GET", "/v1/jobs", "POST"),
    ):
        answer = httpx.request(method, url + path, headers=auth(KEY))
        assert answer.status_code == 405 and answer.headers["allow"] == allow, path
        assert answer.json()["error"]["code"] == 405, path
    for path in ("/v1/nothing", "/v1/models/sim-llama", "/v1/jobs/a/b/c"):
        answer = httpx.get(url + path, headers=auth(KEY))
        assert answer.status_code == 404 and answer.json()["error"]["code"] == 404, path
        assert answer.headers["x-infermeter-request-id"]


def test_the_cli_prints_the_document(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "infermeter.toml"
    config.write_text(f'[gateway.models."{MODEL}"]\nreplicas = [{{url = "http://127.0.0.1:1"}}]\n')
    assert main(["--config", str(config), "gateway", "openapi"]) == 0
    assert json.loads(capsys.readouterr().out) == gateway_openapi([MODEL])


def test_schemathesis_finds_nothing_on_a_real_gateway(url: str) -> None:
    doc = httpx.get(f"{url}/openapi.json").json()
    report = fuzz_service(
        doc, url, headers=AUTH, max_examples=60, time_budget_s=300, exclude=["GET /metrics"]
    )
    print(report.summary())
    report.assert_clean(min_operations=10, min_examples=800)
    assert report.statuses[200] > 50 and report.statuses[401] > 10, report.summary()
