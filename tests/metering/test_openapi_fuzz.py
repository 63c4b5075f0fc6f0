"""Metering's OpenAPI document is complete and valid, and a real server keeps to it under
schemathesis (auth on, seeded with records, GPU samples and an allocation run)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import timedelta

import httpx
import orjson
import pytest
from fastapi.routing import APIRoute
from openapi_spec_validator import validate

from infermeter.kernel.records import GpuSample, UsageRecord
from infermeter.metering.api import create_app
from infermeter.metering.openapi import build
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import BudgetSettings, MeteringSettings, ReplicaSettings
from tests.conftest import ManualClock, ServerThread
from tests.metering.conftest import T0
from tests.metering.test_api import INGEST, READ, usage
from tests.schema_fuzz import fuzz_service

HTTP_METHODS = {"get", "post", "put", "delete", "patch"}


@pytest.fixture
def service() -> Iterator[MeteringService]:
    settings = MeteringSettings(
        storage="duckdb:///:memory:",
        ingest_token="ingest-secret",
        read_token="read-secret",
        replicas={"r1": ReplicaSettings(gpu="h100-sxm", pool="gpu", model="llama")},
        budgets={"acme": BudgetSettings(daily_usd=0.5)},
        allocate_every_s=0,
    )
    svc = MeteringService(settings, now=ManualClock(start=(T0 + timedelta(hours=2)).timestamp()))
    yield svc
    svc.stop()


@pytest.fixture
def seeded(service: MeteringService, serve: Callable[..., ServerThread]) -> str:
    """A real server holding records, GPU samples and one allocation run (reports have rows)."""
    url = serve(create_app(service)).url
    records = [usage(i, tenant="acme" if i % 2 else "globex") for i in range(20)]
    records.append(usage(99, status="cache_hit", replica=""))
    samples = [
        GpuSample(T0 + timedelta(minutes=m), "n1", "GPU-1", "NVIDIA H100 80GB HBM3", replica="r1")
        for m in range(30)
    ]
    for path, body in (("usage", records), ("gpu-samples", [s.to_json() for s in samples])):
        answer = httpx.post(f"{url}/v1/{path}", content=orjson.dumps(body), headers=INGEST)
        assert answer.status_code == 200 and not answer.json()["rejected"], answer.text
    window = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=1)).isoformat()}
    assert httpx.post(f"{url}/v1/admin/allocate", params=window, headers=INGEST).is_success
    return url


def test_the_document_is_valid_openapi_and_names_every_route(service: MeteringService) -> None:
    app = create_app(service, start_loop=False)
    doc = app.openapi()
    validate(doc)
    routes = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    } | {(str(app.openapi_url), "get")}
    documented = {(p, m) for p, item in doc["paths"].items() for m in item if m in HTTP_METHODS}
    assert routes == documented
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert "422" not in op["responses"] or "since" in str(op.get("parameters")), path
            if path.startswith("/v1/"):
                scopes = op["security"][0]["bearer"]
                assert scopes and set(scopes) <= {"ingest", "read", "admin"}, (path, method)
                assert {"401", "200"} <= set(op["responses"]), (path, method)
    ingest = doc["paths"]["/v1/usage"]["post"]["requestBody"]["content"]
    assert {
        "application/json",
        "application/cloudevents-batch+json",
        "application/vnd.apache.arrow.stream",
    } <= set(ingest)


@pytest.mark.parametrize(
    ("schema", "record"), [("UsageRecord", UsageRecord), ("GpuSample", GpuSample)]
)
def test_record_schemas_name_the_record_fields(schema: str, record: type) -> None:
    props = build()["components"]["schemas"][schema]["properties"]
    assert set(props) == {f.name for f in dataclasses.fields(record)}


@pytest.mark.parametrize("path", ["/v1/usage", "/v1/gpu-samples"])
def test_an_empty_body_is_400_naming_the_body_on_both_ingest_routes(seeded: str, path: str) -> None:
    for empty in (b"", b"  \n"):
        answer = httpx.post(f"{seeded}{path}", content=empty, headers=INGEST)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "body"
    batch = httpx.post(f"{seeded}{path}", content=b"[]", headers=INGEST)
    assert batch.status_code == 200 and batch.json()["accepted"] == 0


def test_a_wrong_method_is_405_with_allow_and_the_error_body(seeded: str) -> None:
    answer = httpx.put(f"{seeded}/v1/rates", headers=READ)
    assert answer.status_code == 405 and answer.headers["allow"] == "GET"
    assert answer.json()["error"]["code"] == 405
    assert httpx.get(f"{seeded}/v1/nowhere", headers=READ).json()["error"]["code"] == 404


def test_schemathesis_finds_nothing_on_a_real_server(seeded: str, service: MeteringService) -> None:
    doc = create_app(service, start_loop=False).openapi()
    report = fuzz_service(
        doc, seeded, headers=INGEST, max_examples=5, time_budget_s=300, exclude=["GET /metrics"]
    )
    print(report.summary())
    report.assert_clean(min_operations=19, min_examples=600)
