"""The schemathesis harness finds what it is meant to find: a 5xx, an undocumented status,
a body off its schema, a hang, and an operation that ignores auth; a clean API passes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.conftest import ServerThread
from tests.schema_fuzz import FuzzReport, fuzz_service

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OK = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def _spec(route: str) -> dict[str, Any]:
    responses = {
        "200": {"description": "ok", "content": {"application/json": {"schema": OK}}},
        "400": {"description": "bad n", "content": {"application/json": {"schema": ERROR}}},
        "401": {"description": "no token", "content": {"application/json": {"schema": ERROR}}},
    }
    parameter = {"name": "n", "in": "query", "required": True, "schema": {"type": "integer"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "fuzz target", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {route: {"get": {"parameters": [parameter], "responses": responses}}},
    }


def _app(never: asyncio.Event) -> FastAPI:
    app = FastAPI()

    def answer(request: Request, body: Callable[[int], Any], status: int = 200) -> JSONResponse:
        if request.headers.get("authorization") != AUTH["Authorization"]:
            return JSONResponse({"error": "token"}, status_code=401)
        try:
            n = int(request.query_params["n"])
        except (KeyError, ValueError):
            return JSONResponse({"error": "n"}, status_code=400)
        return JSONResponse(body(n), status_code=status)

    @app.get("/clean")
    async def clean(request: Request) -> JSONResponse:
        return answer(request, lambda n: {"n": n})

    @app.get("/crash")
    async def crash(request: Request) -> JSONResponse:
        return answer(request, lambda n: {"error": "boom"}, 500)

    @app.get("/teapot")
    async def teapot(request: Request) -> JSONResponse:
        return answer(request, lambda n: {"error": "tea"}, 418)

    @app.get("/off-schema")
    async def off_schema(request: Request) -> JSONResponse:
        return answer(request, lambda n: {"n": str(n)})

    @app.get("/hang")
    async def hang(request: Request) -> JSONResponse:
        await never.wait()  # never set: the harness's request timeout must end it
        return answer(request, lambda n: {"n": n})

    @app.get("/open")
    async def open_route(request: Request) -> JSONResponse:
        return JSONResponse({"n": 1})

    return app


@pytest.fixture(scope="module")
def url() -> Any:
    with ServerThread(_app(asyncio.Event())) as server:
        yield server.url


def _fuzz(url: str, route: str) -> FuzzReport:
    return fuzz_service(
        _spec(route), url, headers=AUTH, max_examples=5, time_budget_s=20, request_timeout_s=0.5
    )


def test_a_clean_api_passes_with_its_figures(url: str) -> None:
    report = _fuzz(url, "/clean")
    report.assert_clean(min_operations=1, min_examples=5)
    assert report.server_errors == 0 and report.statuses[200] > 0
    with pytest.raises(AssertionError):  # a run that exercised too little cannot pass
        report.assert_clean(min_operations=2, min_examples=1)


@pytest.mark.parametrize(
    ("route", "check", "status"),
    [
        ("/crash", "not_a_server_error", 500),
        ("/teapot", "status_code_conformance", 418),
        ("/off-schema", "response_schema_conformance", 200),
        ("/open", "ignored_auth", 200),
    ],
)
def test_each_contract_break_is_reported(url: str, route: str, check: str, status: int) -> None:
    report = _fuzz(url, route)
    found = {(f.operation, f.check, f.status) for f in report.failures}
    assert (f"GET {route}", check, status) in found, report.summary()
    with pytest.raises(AssertionError):
        report.assert_clean(min_operations=1, min_examples=1)


def test_a_hanging_operation_is_an_error_not_a_hang(url: str) -> None:
    report = _fuzz(url, "/hang")
    assert report.errors or any(f.status is None for f in report.failures), report.summary()
    assert report.elapsed_s < 20
