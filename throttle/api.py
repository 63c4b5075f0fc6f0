"""HTTP ↔ domain mapping only: parse requests, call the runtime, shape responses and errors.

Errors use the OpenAI/vLLM shape ``{"error": {"message", "type", "param", "code"}}`` with a
4xx naming the field at fault; refusals are 429 (or the 403 asked for by an nginx
``auth_request`` deployment) with ``Retry-After`` and the IETF RateLimit fields.
"""

from __future__ import annotations

import hmac
import math
from typing import TYPE_CHECKING, Any, Literal

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.tenancy import bearer_token
from throttle.algorithms import budgets
from throttle.errors import (
    PolicyError,
    RequestError,
    StorageError,
    UnknownPool,
    UnknownReservation,
)
from throttle.headers import rate_limit_headers
from throttle.service import AdmitRequest, AdmitResult
from throttle.signals import keda_body

if TYPE_CHECKING:
    from throttle.app import Runtime

JSON = "application/json"
DENY_STATUS_HEADER = "x-infermeter-deny-status"
MODEL_HEADER = "x-infermeter-model"
MAX_TOKENS_HEADER = "x-infermeter-max-tokens"
ORIGINAL_LENGTH_HEADER = "x-original-content-length"


class AdmitBody(BaseModel):
    """``POST /v1/admit``."""

    model_config = {"extra": "ignore"}

    tenant: str = Field(default="", max_length=200, description="empty: resolved from the headers")
    model: str = Field(..., min_length=1, max_length=300)
    pool: str | None = Field(default=None, max_length=200)
    request_id: str | None = Field(default=None, max_length=200)
    prompt_tokens: int | None = Field(default=None, ge=0, le=100_000_000)
    prompt_chars: int | None = Field(default=None, ge=0, le=1_000_000_000)
    max_tokens: int = Field(..., ge=0, le=10_000_000)
    lease_s: float | None = Field(default=None, gt=0, le=86400)


class SettleBody(BaseModel):
    """``POST /v1/settle``."""

    model_config = {"extra": "ignore"}

    reservation_id: str = Field(..., min_length=1, max_length=200)
    prompt_tokens: int = Field(..., ge=0, le=100_000_000)
    cached_prompt_tokens: int = Field(default=0, ge=0, le=100_000_000)
    completion_tokens: int = Field(default=0, ge=0, le=100_000_000)
    status: Literal["ok", "error", "client_abort", "throttled", "cache_hit"] = "ok"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def error(status: int, message: str, param: str | None, kind: str) -> Response:
    """The error body every infermeter service uses."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return _json(body, status)


def _validation(exc: ValidationError) -> Response:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return error(
        422, f"{param}: {first['msg']}" if param else first["msg"], param, "invalid_request_error"
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _admit_headers(result: AdmitResult, now: float) -> dict[str, str]:
    return rate_limit_headers(
        result.limits,
        result.unit,
        result.decision,
        budgets.day_window(now).end - now,
        budgets.month_window(now).end - now,
    )


def _admit_body(result: AdmitResult) -> dict[str, Any]:
    estimate = {"cost": result.estimate, "unit": result.unit}
    if result.allowed:
        return {
            "allowed": True,
            "reservation_id": result.reservation_id,
            "estimate": estimate,
            "lease_expires_at": result.lease_expires_at,
            "tenant": result.tenant,
            "pool": result.pool,
            "tier": result.limits.tier,
            "pressure": result.pressure,
        }
    return {
        "allowed": False,
        "reason": result.reason,
        "detail": result.decision.detail or None,
        "retry_after_s": _finite(result.retry_after_s),
        "estimate": estimate,
        "tenant": result.tenant,
        "pool": result.pool,
        "tier": result.limits.tier,
        "pressure": result.pressure,
    }


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": model.model_json_schema()}},
        }
    }


def build_router(rt: Runtime) -> APIRouter:
    """All routes of the throttle service bound to one runtime."""
    router = APIRouter()
    api_token = rt.settings.api_token.encode()
    admin_token = rt.settings.admin_token.encode()

    def _authorized(request: Request, token: bytes) -> bool:
        if not token:
            return True
        given = bearer_token(request.headers.get("authorization")) or ""
        return hmac.compare_digest(given.encode(), token)

    def _deny_api(request: Request) -> Response | None:
        if _authorized(request, api_token):
            return None
        return error(401, "missing or invalid bearer token", "authorization", "auth_error")

    @router.post("/v1/admit", openapi_extra=_schema(AdmitBody), tags=["gateway"])
    async def admit(request: Request) -> Response:
        """Reserve the estimated cost of an inference, or say why not and when to retry."""
        if (denied := _deny_api(request)) is not None:
            return denied
        try:
            body = AdmitBody.model_validate_json(await request.body())
        except ValidationError as exc:
            return _validation(exc)
        tier = ""
        tenant = body.tenant
        if not tenant:
            who = rt.resolver.resolve(request.headers)
            tenant, tier = who.tenant, who.tier
        result = await rt.throttle.admit(
            AdmitRequest(
                tenant=tenant,
                model=body.model,
                max_tokens=body.max_tokens,
                prompt_tokens=body.prompt_tokens,
                prompt_chars=body.prompt_chars,
                pool=body.pool,
                request_id=body.request_id,
                tier_hint=tier,
                lease_s=body.lease_s,
            )
        )
        headers = _admit_headers(result, rt.now())
        status = 200 if result.allowed else (503 if result.reason == "unavailable" else 429)
        return _json(_admit_body(result), status, headers)

    @router.post("/v1/settle", openapi_extra=_schema(SettleBody), tags=["gateway"])
    async def settle(request: Request) -> Response:
        """Replace a reservation's estimate by the actual usage (refund or extra debit)."""
        if (denied := _deny_api(request)) is not None:
            return denied
        try:
            body = SettleBody.model_validate_json(await request.body())
        except ValidationError as exc:
            return _validation(exc)
        done = await rt.throttle.settle(
            body.reservation_id,
            body.prompt_tokens,
            body.cached_prompt_tokens,
            body.completion_tokens,
            body.status,
        )
        return _json(
            {
                "settled": True,
                "duplicate": done.duplicate,
                "reservation_id": done.reservation_id,
                "tenant": done.tenant,
                "estimate": {"cost": done.estimate, "unit": done.unit},
                "actual": {"cost": done.actual, "unit": done.unit},
                "delta": {"cost": done.delta, "unit": done.unit},
            }
        )

    async def check(request: Request) -> Response:
        who = rt.resolver.resolve(request.headers)
        headers = request.headers
        try:
            max_tokens = int(headers.get(MAX_TOKENS_HEADER, rt.policy().doc.check_max_tokens))
            length = headers.get(ORIGINAL_LENGTH_HEADER) or headers.get("content-length")
            chars = int(length) if length else None
        except ValueError:
            return error(400, "numeric header expected", MAX_TOKENS_HEADER, "invalid_request_error")
        deny_status = 403 if headers.get(DENY_STATUS_HEADER, "") == "403" else 429
        result = await rt.throttle.admit(
            AdmitRequest(
                tenant=who.tenant,
                model=headers.get(MODEL_HEADER, ""),
                max_tokens=max(0, max_tokens),
                prompt_chars=max(0, chars) if chars is not None else None,
                tier_hint=who.tier,
                lease_s=rt.policy().doc.check_lease_s,
            )
        )
        out = _admit_headers(result, rt.now())
        out["X-Infermeter-Tenant"] = who.tenant
        if result.allowed:
            out["X-Infermeter-Reservation-Id"] = result.reservation_id
            return Response(status_code=200, headers=out)
        out["X-Infermeter-Reason"] = result.reason
        return _json(_admit_body(result), deny_status, out)

    check_doc = (
        "Header-only admission for Envoy ext_authz (200 allows, 429 refuses) and nginx "
        "auth_request (send X-Infermeter-Deny-Status: 403)."
    )
    for method in ("GET", "POST", "HEAD", "PUT", "DELETE"):
        router.add_api_route(
            "/v1/check",
            check,
            methods=[method],
            tags=["proxy"],
            description=check_doc,
            operation_id=f"check_{method.lower()}",
        )
        router.add_api_route(
            "/v1/check/{path:path}",
            check,
            methods=[method],
            tags=["proxy"],
            description=check_doc + " (Envoy path_prefix form: the original path follows)",
            operation_id=f"check_path_{method.lower()}",
        )

    @router.get("/v1/tenants/{tenant}/usage", tags=["gateway"])
    async def usage(tenant: str, request: Request) -> Response:
        """A tenant's limits, remaining burst and budgets, in-flight requests, fair share."""
        if (denied := _deny_api(request)) is not None:
            return denied
        found = await rt.throttle.usage(tenant)
        lim, st = found.limits, found.usage
        unit = found.unit

        def budget(limit: float, spent: float) -> dict[str, Any]:
            return {
                "limit": limit or None,
                "spent": spent,
                "remaining": _finite(budgets.remaining(spent, limit)),
                "unit": unit,
            }

        return _json(
            {
                "tenant": tenant,
                "tier": lim.tier,
                "unit": unit,
                "rate": {
                    "per_s": lim.rate_per_s or None,
                    "burst": lim.burst,
                    "remaining": _finite(st.remaining),
                    "reset_s": st.reset_s,
                },
                "concurrency": {"limit": lim.concurrency or None, "in_flight": st.in_flight},
                "daily": budget(lim.daily_budget, st.day_spent),
                "monthly": budget(lim.monthly_budget, st.month_spent),
                "weight": lim.weight,
                "fair_share": st.fair_counters,
            }
        )

    @router.post("/v1/signals", tags=["collector"])
    async def signals(request: Request) -> Response:
        """Engine signals pushed by collectors (one object or an array)."""
        if (denied := _deny_api(request)) is not None:
            return denied
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return error(400, f"invalid JSON: {exc}", "body", "invalid_request_error")
        pools = await rt.monitor.ingest(body)
        return _json({"accepted": len(body) if isinstance(body, list) else 1, "pools": pools})

    @router.get("/v1/autoscale/{pool}", tags=["autoscale"])
    async def autoscale(pool: str) -> Response:
        """KEDA metrics-api JSON: read ``desired_replicas`` (never empty)."""
        state, rec = await rt.monitor.recommend(pool)
        return _json(keda_body(state, rec, rt.now()))

    @router.get("/v1/autoscale", tags=["autoscale"])
    async def autoscale_all() -> Response:
        """Every known pool's recommendation."""
        out = []
        for pool in await rt.monitor.known_pools():
            state, rec = await rt.monitor.recommend(pool)
            out.append(keda_body(state, rec, rt.now()))
        return _json({"pools": out})

    @router.get("/v1/policy", tags=["admin"])
    async def get_policy(request: Request) -> Response:
        """The policy in force (admin token)."""
        if (denied := _deny_admin(request)) is not None:
            return denied
        policy = rt.policy()
        return _json(
            {
                "version": policy.version,
                "source": policy.source,
                "policy": policy.doc.model_dump(mode="json"),
            }
        )

    @router.put("/v1/policy", tags=["admin"])
    async def put_policy(request: Request) -> Response:
        """Replace the policy (TOML, or a JSON object); invalid: 422 naming the field."""
        if (denied := _deny_admin(request)) is not None:
            return denied
        text = (await request.body()).decode("utf-8", errors="replace")
        policy = await rt.policies.apply(text, "admin api")
        return _json({"version": policy.version, "applied": True})

    def _deny_admin(request: Request) -> Response | None:
        if not admin_token:
            return error(403, "admin API disabled: set [throttle] admin_token", None, "auth_error")
        if _authorized(request, admin_token):
            return None
        return error(401, "missing or invalid admin bearer token", "authorization", "auth_error")

    @router.get("/healthz", tags=["ops"])
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @router.get("/readyz", tags=["ops"])
    async def readyz() -> Response:
        """503 naming what is not reachable (shared storage while deciding locally)."""
        problems = rt.problems()
        body = {
            "status": "degraded" if problems else "ready",
            "problems": problems,
            "storage": rt.storage.name,
            "policy_version": rt.policy().version,
        }
        return _json(body, 503 if problems else 200)

    @router.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(rt.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors to HTTP codes (the only place that does)."""

    @app.exception_handler(RequestError)
    async def _request(_: Request, exc: RequestError) -> Response:
        return error(422, str(exc), exc.field, "invalid_request_error")

    @app.exception_handler(PolicyError)
    async def _policy(_: Request, exc: PolicyError) -> Response:
        return error(422, str(exc), exc.field or None, "invalid_policy")

    @app.exception_handler(UnknownReservation)
    async def _reservation(_: Request, exc: UnknownReservation) -> Response:
        return error(404, str(exc), "reservation_id", "not_found")

    @app.exception_handler(UnknownPool)
    async def _pool(_: Request, exc: UnknownPool) -> Response:
        return error(404, str(exc), "pool", "not_found")

    @app.exception_handler(StorageError)
    async def _storage(_: Request, exc: StorageError) -> Response:
        return error(503, str(exc), None, "storage_unavailable")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return error(exc.status_code, str(exc.detail), None, "http_error")
