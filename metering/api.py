"""The metering HTTP API (FastAPI). This module only maps HTTP to the service and domain
errors to status codes: RecordError/BatchError/QueryError -> 400, bad token -> 401, unknown
request -> 404, oversized body -> 413, RangeError (``since`` / ``until`` unparsable, or
``until`` not after ``since``) -> 422, StorageError -> 503; an unknown path is 404 and a wrong
method 405 (with ``Allow``). Error bodies use the OpenAI shape
``{"error": {"message", "type", "param", "code"}}``. Endpoints: docs/metering.md; the OpenAPI
document (``metering/openapi.py``) lists each route's parameters, bodies and statuses."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from infermeter.kernel.openai_errors import error_object
from infermeter.kernel.openapi import serve_built
from infermeter.kernel.service_auth import BearerCheck
from infermeter.metering.errors import (
    BatchError,
    MeteringError,
    QueryError,
    RangeError,
    RecordError,
    StorageError,
)
from infermeter.metering.focus.export import export_focus, format_for
from infermeter.metering.metrics import MeteringCollector
from infermeter.metering.openapi import MAX_CALIBRATION_LIMIT, build
from infermeter.metering.service import MeteringService
from infermeter.metering.timeparse import check_range, parse_time


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


class AuthError(Exception):
    def __init__(self, scope: str) -> None:
        self.scope = scope


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        error_object(status, message, kind, param),
        status_code=status,
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
    )


def create_app(service: MeteringService, *, start_loop: bool = True) -> FastAPI:
    """The ASGI app for one service; the background allocation loop runs with the app."""
    settings = service.settings
    registry = CollectorRegistry()
    registry.register(MeteringCollector(service, service.now))

    ingest_scope = BearerCheck("ingest", settings.ingest_token)
    read_scope = BearerCheck("read", settings.read_token, settings.ingest_token)
    admin_scope = BearerCheck("admin", settings.admin_token or settings.ingest_token)

    def _checker(scope: BearerCheck) -> Callable[[Request], None]:
        def check(request: Request) -> None:
            if not scope.allows(request.headers.get("authorization")):
                raise AuthError(scope.scope)

        return check

    ingest_auth, read_auth, admin_auth = map(_checker, (ingest_scope, read_scope, admin_scope))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start_loop:
            service.start()
        yield

    app = FastAPI(title="infermeter metering", lifespan=lifespan)
    serve_built(app, build)
    app.state.service = service

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        reply = _error(exc.status_code, str(exc.detail), "invalid_request_error")
        reply.headers.update(exc.headers or {})  # a 405 keeps its Allow
        return reply

    @app.exception_handler(AuthError)
    async def _auth(_: Request, exc: AuthError) -> JSONResponse:
        return _error(401, f"missing or invalid bearer token ({exc.scope})", "unauthorized")

    @app.exception_handler(TooLarge)
    async def _too_large(_: Request, exc: TooLarge) -> JSONResponse:
        return _error(413, f"body larger than {exc.limit} bytes", "payload_too_large", "body")

    @app.exception_handler(duckdb.Error)
    async def _duckdb(_: Request, exc: duckdb.Error) -> JSONResponse:
        return _error(503, f"store error: {exc}", "storage_unavailable")

    @app.exception_handler(RecordError)
    async def _record(_: Request, exc: RecordError) -> JSONResponse:
        return _error(400, str(exc), "invalid_record", exc.field)

    @app.exception_handler(BatchError)
    async def _batch(_: Request, exc: BatchError) -> JSONResponse:
        return _error(400, str(exc), "invalid_batch", exc.field)

    @app.exception_handler(RangeError)
    async def _range_error(_: Request, exc: RangeError) -> JSONResponse:
        return _error(422, str(exc), "invalid_request_error", exc.param)

    @app.exception_handler(QueryError)
    async def _query(_: Request, exc: QueryError) -> JSONResponse:
        return _error(400, str(exc), "invalid_request_error", exc.param)

    @app.exception_handler(StorageError)
    async def _storage(_: Request, exc: StorageError) -> JSONResponse:
        return _error(503, str(exc), "storage_unavailable")

    @app.exception_handler(MeteringError)
    async def _metering(_: Request, exc: MeteringError) -> JSONResponse:
        return _error(400, str(exc), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return _error(400, str(first["msg"]), "invalid_request_error", param)

    async def _body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if (
            length
            and length.isascii()
            and length.isdigit()
            and int(length) > settings.max_body_bytes
        ):
            raise TooLarge(settings.max_body_bytes)
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            raise TooLarge(settings.max_body_bytes)
        return body

    def _times(request: Request, since_ago_s: float) -> tuple[datetime, datetime]:
        """``since`` (default ``since_ago_s`` back) and ``until`` (default now), validated:
        both parse and ``until`` is after ``since`` (else RangeError, HTTP 422)."""
        now = service.now()
        q = request.query_params
        since = parse_time(q.get("since"), now, "since", since_ago_s)
        until = parse_time(q.get("until"), now, "until", 0.0)
        check_range(since, until)
        return since, until

    # -- health --------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Alive unless the store hit a fatal error: DuckDB then refuses every query until the
        process restarts, so liveness fails and the orchestrator restarts it (collectors
        keep their records spooled meanwhile)."""
        fatal = await run_in_threadpool(service.store.fatal_error)
        if fatal:
            return JSONResponse(
                {"status": "failed", "problems": {"storage": fatal}}, status_code=503
            )
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            cur = service.store.cursor()
            try:
                cur.execute("SELECT count(*) FROM schema_migrations").fetchone()
            finally:
                cur.close()
        except duckdb.Error as exc:
            return JSONResponse(
                {"status": "unavailable", "failing": {"storage": str(exc)}}, status_code=503
            )
        return JSONResponse({"status": "ready", "storage": service.store.uri.split("://")[0]})

    @app.get("/metrics")
    async def metrics() -> Response:
        data = await run_in_threadpool(generate_latest, registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    # -- ingest --------------------------------------------------------------------------
    @app.post("/v1/usage", dependencies=[Depends(ingest_auth)])
    async def post_usage(request: Request) -> dict[str, Any]:
        body = await _body(request)
        ctype = request.headers.get("content-type", "application/json")
        result = await run_in_threadpool(service.ingestor.usage, body, ctype)
        return result.to_json()

    @app.post("/v1/gpu-samples", dependencies=[Depends(ingest_auth)])
    async def post_samples(request: Request) -> dict[str, Any]:
        body = await _body(request)
        ctype = request.headers.get("content-type", "application/json")
        result = await run_in_threadpool(service.ingestor.gpu_samples, body, ctype)
        return result.to_json()

    # -- admin ---------------------------------------------------------------------------
    @app.post("/v1/admin/allocate", dependencies=[Depends(admin_auth)])
    async def allocate(request: Request) -> dict[str, Any]:
        has_range = "since" in request.query_params or "until" in request.query_params
        since, until = _times(request, 86400.0) if has_range else (None, None)
        result = await run_in_threadpool(service.allocate, since, until)
        return result.to_json()

    @app.post("/v1/admin/check-budgets", dependencies=[Depends(admin_auth)])
    async def check_budgets() -> dict[str, Any]:
        return {"alerts": await run_in_threadpool(service.budgets.check)}

    # -- queries -------------------------------------------------------------------------
    @app.get("/v1/rates", dependencies=[Depends(read_auth)])
    async def rates() -> dict[str, Any]:
        return await run_in_threadpool(service.reports.rates)

    @app.get("/v1/budgets", dependencies=[Depends(read_auth)])
    async def budgets() -> dict[str, Any]:
        def all_states() -> dict[str, Any]:
            return {"tenants": [service.budgets.state(t) for t in sorted(settings.budgets)]}

        return await run_in_threadpool(all_states)

    @app.get("/v1/budgets/{tenant}", dependencies=[Depends(read_auth)])
    async def budget(tenant: str) -> dict[str, Any]:
        return await run_in_threadpool(service.budgets.state, tenant)

    @app.get("/v1/requests/{request_id}", dependencies=[Depends(read_auth)])
    async def request_cost(request_id: str) -> Any:
        found = await run_in_threadpool(service.reports.request, request_id)
        if found is None:
            return _error(404, f"unknown request_id {request_id!r}", "not_found", "request_id")
        return found

    @app.get("/v1/reports/cost", dependencies=[Depends(read_auth)])
    async def cost(request: Request) -> dict[str, Any]:
        q = request.query_params
        return await run_in_threadpool(
            service.reports.cost,
            q.get("by", "tenant"),
            *_times(request, 7 * 86400.0),
            q.get("granularity", "day"),
            q.get("tenant", ""),
            q.get("model", ""),
        )

    @app.get("/v1/reports/idle", dependencies=[Depends(read_auth)])
    async def idle(request: Request) -> dict[str, Any]:
        q = request.query_params
        return await run_in_threadpool(
            service.reports.idle,
            q.get("by", "replica"),
            *_times(request, 7 * 86400.0),
            q.get("granularity", "day"),
        )

    @app.get("/v1/reports/buy-vs-build", dependencies=[Depends(read_auth)])
    async def buy_vs_build(request: Request) -> dict[str, Any]:
        return await run_in_threadpool(
            service.reports.buy_vs_build,
            *_times(request, 30 * 86400.0),
        )

    @app.get("/v1/reports/latency", dependencies=[Depends(read_auth)])
    async def latency(request: Request) -> dict[str, Any]:
        q = request.query_params
        return await run_in_threadpool(
            service.reports.latency,
            *_times(request, 86400.0),
            q.get("granularity", "hour"),
            q.get("model", ""),
            q.get("tenant", ""),
            q.get("by", ""),
            q.get("pool", ""),
            q.get("replica", ""),
        )

    @app.get("/v1/reports/gpu", dependencies=[Depends(read_auth)])
    async def gpu(request: Request) -> dict[str, Any]:
        q = request.query_params
        return await run_in_threadpool(
            service.reports.gpu,
            *_times(request, 3600.0),
            q.get("granularity", "minute"),
            q.get("replica", ""),
        )

    @app.get("/v1/reports/cache-savings", dependencies=[Depends(read_auth)])
    async def cache_savings(request: Request) -> dict[str, Any]:
        return await run_in_threadpool(
            service.reports.cache_savings,
            *_times(request, 30 * 86400.0),
        )

    @app.get("/v1/calibration", dependencies=[Depends(read_auth)])
    async def calibration(request: Request) -> dict[str, Any]:
        q = request.query_params
        limit = q.get("limit", "50")
        if not (limit.isascii() and limit.isdigit()) or int(limit) > MAX_CALIBRATION_LIMIT:
            raise QueryError("limit", f"must be an integer 0..{MAX_CALIBRATION_LIMIT}")
        return await run_in_threadpool(service.reports.calibration, q.get("model", ""), int(limit))

    @app.get("/v1/export/focus", dependencies=[Depends(read_auth)])
    async def focus(request: Request) -> FileResponse:
        fmt = format_for("", request.query_params.get("format", "csv"))
        since, until = _times(request, 30 * 86400.0)
        tmp = Path(tempfile.mkdtemp(prefix="infermeter-focus-")) / f"focus.{fmt}"
        await run_in_threadpool(export_focus, service.store, since, until, tmp, fmt)
        media = "text/csv" if fmt == "csv" else "application/vnd.apache.parquet"
        return FileResponse(
            tmp,
            media_type=media,
            filename=f"focus-{since:%Y%m%dT%H%M}-{until:%Y%m%dT%H%M}.{fmt}",
            background=BackgroundTask(_remove, tmp),
        )

    return app


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.parent.rmdir()
