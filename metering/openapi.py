"""The metering API's OpenAPI 3.1 document: every route's parameters, bodies, answers, scopes.

FastAPI sees only ``request: Request`` in the handlers (they read their query and body
themselves, to keep ingest on its fast path), so the document is written here, from the
kernel's builders (:mod:`infermeter.kernel.openapi`), and :func:`install` makes the app serve
it at ``/openapi.json``. ``tests/metering/test_openapi_fuzz.py`` checks that every route is in
it, that it is a valid OpenAPI document, and runs schemathesis against a real server with it.

Statuses, the same on every route that can give them: 400 a bad body or query parameter
(``param`` names it), 401 a missing or wrong token, 404 an unknown request id, 413 a body over
``max_body_bytes``, 422 a time bound that is not a time or an inverted range, 503 the store
failed. Tokens are bearer tokens of three scopes (``ingest``, ``read``, ``admin``), written as
the scope list of each operation's ``bearer`` requirement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from infermeter.kernel.openapi import (
    BEARER,
    BEARER_SCHEME,
    JSON,
    document,
    error,
    json_response,
    operation,
    parameter,
    ref,
    response,
    service_paths,
)
from infermeter.metering.openapi_schemas import SCHEMAS, Schema
from infermeter.metering.reports import DIMENSIONS

CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
ARROW_FILE = "application/vnd.apache.arrow.file"
PARQUET = "application/vnd.apache.parquet"
MAX_CALIBRATION_LIMIT = 10_000  # GET /v1/calibration?limit=

SCOPES = {
    "ingest": "POST /v1/usage, /v1/gpu-samples (`[metering] ingest_token`; also reads)",
    "read": "queries and reports (`read_token`, or the ingest token)",
    "admin": "/v1/admin/* (`admin_token`, or the ingest token when it is empty)",
}
ERRORS: dict[int, str] = {
    400: "Bad body or query parameter; `param` names it",
    401: "Missing or invalid bearer token (`WWW-Authenticate: Bearer`)",
    404: "No usage record has this request id",
    413: "Body larger than `max_body_bytes`",
    422: "`since` / `until` is not a time, or `until` is not after `since`; `param` names it",
    503: "The store failed (nothing was stored)",
}
TIME_HELP = (
    "RFC 3339 time, a date (2026-11-24), `now`, or a duration back from now (90m, 24h, 7d, 2w)"
)


def _time(name: str, default: str) -> Schema:
    return parameter("query", name, {"type": "string"}, f"{TIME_HELP}; default {default}")


def _choice(name: str, values: Sequence[str], default: str, description: str) -> Schema:
    schema: Schema = {"type": "string", "enum": list(values), "default": default}
    return parameter("query", name, schema, description)


def _filter(name: str) -> Schema:
    return parameter("query", name, {"type": "string"}, f"only this {name} (empty: all)")


def _range(default: str) -> list[Schema]:
    return [_time("since", f"{default} ago"), _time("until", "now (exclusive)")]


GRAIN_COST = ("hour", "day", "total")
GRAIN_SERIES = ("minute", "hour", "day", "total")


def _op(
    op_id: str,
    summary: str,
    scope: str,
    ok: Schema,
    statuses: Sequence[int],
    *,
    parameters: Sequence[Schema] = (),
    body: Schema | None = None,
    tags: Sequence[str] = (),
) -> Schema:
    answers = {"200": ok, **{str(s): error(ERRORS[s]) for s in (401, *statuses)}}
    answers["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    out = operation(op_id, summary, answers, parameters=parameters, tags=tags)
    out["security"] = [{BEARER: [scope]}]
    out["description"] = f"Token scope: `{scope}`."
    if body is not None:
        out["requestBody"] = body
    return out


def _batch(record: str, event: str) -> Schema:
    """An ingest body: JSON records or CloudEvents, a CloudEvents batch, or Arrow IPC."""
    arrow = {"type": "string", "format": "binary"}
    items = {"oneOf": [ref(record), ref(event)]}
    return {
        "required": True,
        "description": "A batch (`[]` is an empty batch; an empty body is a 400 naming `body`)",
        "content": {
            JSON: {"schema": {"type": "array", "items": items}},
            CLOUDEVENTS_BATCH: {"schema": {"type": "array", "items": ref(event)}},
            ARROW_STREAM: {"schema": arrow},
            ARROW_FILE: {"schema": arrow},
        },
    }


def _read(op_id: str, summary: str, schema: str, statuses: Sequence[int], **kw: Any) -> Schema:
    return _op(op_id, summary, "read", json_response(summary, ref(schema)), statuses, **kw)


def paths() -> dict[str, dict[str, Schema]]:
    """Every route of ``metering/api.py``, by path and method."""
    store = (503,)
    ranged = (400, 422, 503)
    batch = json_response("Batch stored (rejected records listed)", ref("BatchResult"))
    by_key = sorted(DIMENSIONS)
    return {
        "/v1/usage": {
            "post": _op(
                "post_usage",
                "Ingest usage records",
                "ingest",
                batch,
                (400, 413, 503),
                body=_batch("UsageRecord", "UsageEvent"),
                tags=["ingest"],
            ),
        },
        "/v1/gpu-samples": {
            "post": _op(
                "post_gpu_samples",
                "Ingest GPU samples",
                "ingest",
                batch,
                (400, 413, 503),
                body=_batch("GpuSample", "GpuSampleEvent"),
                tags=["ingest"],
            ),
        },
        "/v1/admin/allocate": {
            "post": _op(
                "allocate",
                "Run allocation now (default: the service's own range)",
                "admin",
                json_response("Run summary", ref("AllocationRun")),
                (422, 503),
                parameters=_range("24h"),
                tags=["admin"],
            ),
        },
        "/v1/admin/check-budgets": {
            "post": _op(
                "check_budgets",
                "Check every budget now and send due alerts",
                "admin",
                json_response("Alerts sent", ref("BudgetAlerts")),
                store,
                tags=["admin"],
            ),
        },
        "/v1/rates": {"get": _read("rates", "Current price per model", "Rates", store)},
        "/v1/budgets": {
            "get": _read("budgets", "Every configured tenant's budget state", "Budgets", store)
        },
        "/v1/budgets/{tenant}": {
            "get": _read(
                "budget",
                "A tenant's budget state",
                "BudgetState",
                store,
                parameters=[parameter("path", "tenant", {"type": "string"}, "tenant name")],
            ),
        },
        "/v1/requests/{request_id}": {
            "get": _read(
                "request_cost",
                "One request's cost, recomputed",
                "RequestCost",
                (404, 503),
                parameters=[parameter("path", "request_id", {"type": "string"}, "its id")],
            ),
        },
        "/v1/reports/cost": {
            "get": _read(
                "cost",
                "Cost per bucket and key",
                "CostReport",
                ranged,
                tags=["reports"],
                parameters=[
                    _choice("by", by_key, "tenant", "the key of each row"),
                    *_range("7d"),
                    _choice("granularity", GRAIN_COST, "day", "bucket size"),
                    _filter("tenant"),
                    _filter("model"),
                ],
            ),
        },
        "/v1/reports/idle": {
            "get": _read(
                "idle",
                "Idle cost per bucket",
                "IdleReport",
                ranged,
                tags=["reports"],
                parameters=[
                    _choice("by", ("replica", "pool"), "replica", "the key of each row"),
                    *_range("7d"),
                    _choice("granularity", GRAIN_COST, "day", "bucket size"),
                ],
            ),
        },
        "/v1/reports/buy-vs-build": {
            "get": _read(
                "buy_vs_build",
                "Self-hosted cost beside managed APIs",
                "BuyVsBuild",
                ranged,
                parameters=_range("30d"),
                tags=["reports"],
            ),
        },
        "/v1/reports/latency": {
            "get": _read(
                "latency",
                "Latency and throughput per bucket",
                "LatencyReport",
                ranged,
                tags=["reports"],
                parameters=[
                    *_range("24h"),
                    _choice("granularity", GRAIN_SERIES, "hour", "bucket size"),
                    _filter("model"),
                    _filter("tenant"),
                    _choice("by", ("", "pool", "replica"), "", "split rows by (empty: fleet)"),
                    _filter("pool"),
                    _filter("replica"),
                ],
            ),
        },
        "/v1/reports/gpu": {
            "get": _read(
                "gpu",
                "GPU samples per bucket and device",
                "GpuReport",
                ranged,
                tags=["reports"],
                parameters=[
                    *_range("1h"),
                    _choice("granularity", GRAIN_SERIES, "minute", "bucket size"),
                    _filter("replica"),
                ],
            ),
        },
        "/v1/reports/cache-savings": {
            "get": _read(
                "cache_savings",
                "What cache hits saved",
                "CacheSavings",
                ranged,
                parameters=_range("30d"),
                tags=["reports"],
            ),
        },
        "/v1/calibration": {
            "get": _read(
                "calibration",
                "Latest calibration per model and the fits",
                "Calibrations",
                (400, 503),
                parameters=[
                    _filter("model"),
                    parameter(
                        "query",
                        "limit",
                        {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": MAX_CALIBRATION_LIMIT,
                            "default": 50,
                        },
                        "how many fits of the history",
                    ),
                ],
            ),
        },
        "/v1/export/focus": {
            "get": _op(
                "export_focus",
                "FOCUS 1.0 export",
                "read",
                response(
                    "The FOCUS file (attachment)",
                    {
                        "text/csv": {"type": "string"},
                        PARQUET: {"type": "string", "format": "binary"},
                    },
                ),
                ranged,
                tags=["reports"],
                parameters=[
                    *_range("30d"),
                    _choice("format", ("csv", "parquet"), "csv", "file format"),
                ],
            ),
        },
    }


def build() -> Schema:
    """The whole document."""
    scopes = "; ".join(f"`{name}`: {what}" for name, what in SCOPES.items())
    scheme = {**BEARER_SCHEME, "description": f"Scoped bearer tokens. {scopes}."}
    operations = service_paths(
        readiness="The store answers", metrics="Metering's own metrics (promtool-clean)"
    )
    operations["/healthz"]["get"]["responses"]["503"] = json_response(
        "The store hit a fatal error (DuckDB invalidated the database): restart the process",
        ref("Status"),
    )
    return document(
        "infermeter metering",
        "1",
        "Usage records and GPU samples in; cost allocation, reports, rates, budgets and the "
        "FOCUS export out. Errors: the OpenAI error body, 4xx naming the field.",
        {**paths(), **operations},
        SCHEMAS,
        security_schemes={BEARER: scheme},
    )
