"""The throttle's OpenAPI document is complete and valid, and a real server keeps to it under
schemathesis (auth on: decisions, signals, read and admin tokens; seeded with admissions and
signals)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from openapi_spec_validator import validate

from infermeter.throttle.app import Runtime, build_api, create_app
from infermeter.throttle.gateway_http import CHECK_METHODS, AdmitBody, SettleBody
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.settings import ThrottleSettings
from tests.conftest import ServerThread
from tests.schema_fuzz import fuzz_service
from tests.throttle.throttle_helpers import POLICY

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Infermeter-Token": TOKEN}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture
def runtime() -> Runtime:
    settings = ThrottleSettings(api_token=TOKEN, admin_token=TOKEN)
    return Runtime(settings, policy=load_policy_text(POLICY))


@pytest.fixture
def seeded(runtime: Runtime, serve: Callable[..., ServerThread]) -> Iterator[str]:
    """A real server with reservations, a settle and fresh signals (autoscale has a pool)."""
    url = serve(create_app(runtime, background=False)).url
    with httpx.Client(base_url=url, headers=AUTH) as client:
        admitted = client.post("/v1/admit", json={"tenant": "acme", "model": "m", "max_tokens": 9})
        assert admitted.status_code == 200, admitted.text
        rid = admitted.json()["reservation_id"]
        assert client.post(
            "/v1/settle", json={"reservation_id": rid, "prompt_tokens": 3}
        ).is_success
        signal = {"pool": "p1", "replica": "r0", "ts": time.time(), "num_requests_waiting": 2}
        assert client.post("/v1/signals", json=signal).status_code == 200
    yield url


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, those of included routers too (FastAPI wraps them)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:
            yield from _api_routes(router.routes)


def _routes(runtime: Runtime) -> set[tuple[str, str]]:
    app = build_api(runtime, background=False)
    return {
        (route.path.replace(":path}", "}"), method.lower())
        for route in _api_routes(app.routes)
        for method in route.methods
    } | {(str(app.openapi_url), "get")}


def test_the_document_is_valid_openapi_and_names_exactly_the_routes(runtime: Runtime) -> None:
    doc = build_api(runtime, background=False).openapi()
    validate(doc)
    documented = {(p, m) for p, item in doc["paths"].items() for m in item if m in HTTP_METHODS}
    assert _routes(runtime) == documented
    check = {m.upper() for m in doc["paths"]["/v1/check"]}
    assert check == set(CHECK_METHODS) == {m.upper() for m in doc["paths"]["/v1/check/{path}"]}
    params = doc["paths"]["/v1/check/{path}"]["get"]["parameters"]
    assert {"name": "path", "in": "path"}.items() <= params[0].items()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert "413" in codes, (path, method)
            assert "422" not in codes or path in {"/v1/signals", "/v1/policy"}, (path, method)
            if path.startswith("/v1/"):
                ((scheme, scopes),) = op["security"][0].items()
                assert scheme in {"bearer", "service_token"} and len(scopes) == 1, path
                assert scopes[0] in {"decisions", "signals", "read", "admin"}, (path, method)
                assert {"200", "401"} <= codes, (path, method)
    schemas = doc["components"]["schemas"]
    for model in (AdmitBody, SettleBody):
        assert set(schemas[model.__name__]["properties"]) == set(model.model_fields)
    assert "tiers" in schemas["PolicyDocument"]["properties"] and "Tier" in schemas
    assert doc["paths"]["/v1/admit"]["post"]["requestBody"]["content"]["application/json"] == {
        "schema": {"$ref": "#/components/schemas/AdmitBody"}
    }


def test_wrong_method_unknown_path_and_bad_input_answer_the_error_body(seeded: str) -> None:
    with httpx.Client(base_url=seeded, headers=AUTH) as client:
        for method, path, allow in (
            ("GET", "/v1/admit", "POST"),
            ("TRACE", "/v1/check", ", ".join(CHECK_METHODS)),
            ("TRACE", "/v1/check/v1/chat/completions", ", ".join(CHECK_METHODS)),
            ("DELETE", "/v1/tenants", "GET"),
        ):
            answer = client.request(method, path)
            assert answer.status_code == 405, (method, path, answer.text)
            assert answer.headers["allow"] == allow and answer.json()["error"]["code"] == 405
        missing = client.get("/v1/nowhere")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == 404
        for path, body, param in (
            ("/v1/admit", b"{not json", "body"),
            ("/v1/admit", b"[]", "body"),
            ("/v1/admit", b'{"model": "m", "max_tokens": -1}', "max_tokens"),
            ("/v1/settle", b'{"prompt_tokens": 1}', "reservation_id"),
            ("/v1/signals", b"{not json", "body"),
            ("/v1/signals", b'[{"pool": "p1", "replica": 3}]', "[0].replica"),
        ):
            answer = client.post(path, content=body)
            assert answer.status_code == 400, (path, body, answer.text)
            assert answer.json()["error"]["param"] == param
        unauthorized = httpx.post(f"{seeded}/v1/admit", json={})
        assert unauthorized.status_code == 401
        assert unauthorized.headers["www-authenticate"] == "Bearer"
        assert client.get("/v1/check", headers={"x-infermeter-token": "no"}).status_code == 401


def test_schemathesis_finds_nothing_on_a_real_server(seeded: str, runtime: Runtime) -> None:
    doc = build_api(runtime, background=False).openapi()
    report = fuzz_service(doc, seeded, headers=AUTH, max_examples=30, time_budget_s=300)
    print(report.summary())
    operations = sum(len(item) for item in doc["paths"].values())
    report.assert_clean(min_operations=operations, min_examples=2000)
