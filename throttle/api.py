"""HTTP ↔ domain mapping only: parse requests, call the runtime, shape responses and errors.

Errors use the OpenAI/vLLM shape ``{"error": {"message", "type", "param", "code"}}`` with a
4xx naming the field at fault; refusals are 429 (or the 403 asked for by an nginx
``auth_request`` deployment) with ``Retry-After`` and the IETF RateLimit fields.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from infermeter.kernel.service_auth import BearerCheck
from infermeter.throttle.algorithms import budgets
from infermeter.throttle.decision_log import counts_by_reason
from infermeter.throttle.errors import ThrottleError
from infermeter.throttle.gateway_http import (
    CHECK_METHODS,
    JSON,
    GatewayHandlers,
    Reply,
    error_reply,
    finite,
    reply_for,
)
from infermeter.throttle.service import KnownTenant
from infermeter.throttle.signals import keda_body

if TYPE_CHECKING:
    from infermeter.throttle.app import Runtime


MAX_TENANTS_LISTED = 10_000
COMPLETE_POLICY = ("default_tier", "tiers")  # what a PUT /v1/policy must set


def _response(reply: Reply) -> Response:
    media = JSON if reply.body else None
    return Response(reply.body, status_code=reply.status, media_type=media, headers=reply.headers)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def error(status: int, message: str, param: str | None, kind: str) -> Response:
    """The error body every infermeter service uses."""
    return _response(error_reply(status, message, kind, param))


def build_router(rt: Runtime) -> APIRouter:
    """All routes of the throttle service bound to one runtime."""
    router = APIRouter()
    handlers = GatewayHandlers(rt)
    auth = rt.auth

    def _deny(request: Request, scope: BearerCheck) -> Response | None:
        if scope.allows(request.headers.get("authorization")):
            return None
        reply = error(
            401, f"missing or invalid bearer token ({scope.scope} scope)", "authorization",
            "auth_error",
        )  # fmt: skip
        reply.headers["WWW-Authenticate"] = "Bearer"
        return reply

    def _deny_api(request: Request) -> Response | None:
        return _deny(request, auth.read)

    @router.post("/v1/admit", tags=["gateway"])
    async def admit(request: Request) -> Response:
        """Reserve the estimated cost of an inference, or say why not and when to retry."""
        return _response(await handlers.admit(await request.body(), request.headers))

    @router.post("/v1/settle", tags=["gateway"])
    async def settle(request: Request) -> Response:
        """Replace a reservation's estimate by the actual usage (refund or extra debit)."""
        return _response(await handlers.settle(await request.body(), request.headers))

    async def check(request: Request) -> Response:
        return _response(await handlers.check(b"", request.headers))

    # served by the fast path ahead of this app; routed here too so the app alone answers
    # them and a method outside CHECK_METHODS is 405 either way
    router.add_api_route("/v1/check", check, methods=list(CHECK_METHODS), tags=["proxy"])
    router.add_api_route(
        "/v1/check/{path:path}", check, methods=list(CHECK_METHODS), tags=["proxy"]
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
                "remaining": finite(budgets.remaining(spent, limit)),
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
                    "remaining": finite(st.remaining),
                    "reset_s": st.reset_s,
                },
                "concurrency": {"limit": lim.concurrency or None, "in_flight": st.in_flight},
                "daily": budget(lim.daily_budget, st.day_spent),
                "monthly": budget(lim.monthly_budget, st.month_spent),
                "weight": lim.weight,
                "fair_share": st.fair_counters,
            }
        )

    @router.get("/v1/tenants", tags=["dashboards"])
    async def tenants(request: Request, limit: str = "1000") -> Response:
        """Tenants the throttle knows (named by the policy or seen in recent decisions, sorted
        by name): tier, weight, current usage and this replica's recent decision counts."""
        if (denied := _deny_api(request)) is not None:
            return denied
        try:
            count = int(limit)
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_TENANTS_LISTED:
            return error(
                400, f"limit must be an integer 1..{MAX_TENANTS_LISTED}", "limit",
                "invalid_request_error",
            )  # fmt: skip
        known, total = await rt.throttle.known_tenants(count)
        return _json(
            {
                "tenants": [_tenant_summary(k) for k in known],
                "total": total,
                "truncated": total > len(known),
                "unit": rt.policy().unit,
                "as_of": rt.now(),
            }
        )

    @router.get("/v1/tenants/{tenant}/decisions", tags=["dashboards"])
    async def decisions(tenant: str, request: Request, since: str = "0") -> Response:
        """This replica's recent decisions for a tenant since ``since`` (RFC 3339 or epoch
        seconds), oldest first, and their counts by reason (``allow`` for admissions)."""
        if (denied := _deny_api(request)) is not None:
            return denied
        start = parse_since(since)
        if start is None:
            return error(
                400, "since must be RFC 3339 (2026-11-24T15:00:00Z) or epoch seconds", "since",
                "invalid_request_error",
            )  # fmt: skip
        entries = rt.throttle.decisions_since(tenant, start)
        return _json(
            {
                "tenant": tenant,
                "since": start,
                "unit": rt.policy().unit,
                "scope": "replica",
                "decisions": [
                    {"ts": ts, "decision": "allow" if ok else "deny", "reason": r, "cost": c}
                    for ts, ok, r, c in entries
                ],
                "counts": counts_by_reason(entries),
            }
        )

    @router.post("/v1/signals", tags=["collector"])
    async def signals(request: Request) -> Response:
        """Engine signals pushed by collectors (one object or an array)."""
        if (denied := _deny(request, auth.signals)) is not None:
            return denied
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return error(400, f"invalid JSON: {exc}", "body", "invalid_request_error")
        pools = await rt.monitor.ingest(body)
        return _json({"accepted": len(body) if isinstance(body, list) else 1, "pools": pools})

    @router.get("/v1/autoscale/{pool}", tags=["autoscale"])
    async def autoscale(pool: str, request: Request) -> Response:
        """KEDA metrics-api JSON: read ``desired_replicas`` (never empty)."""
        if (denied := _deny_api(request)) is not None:
            return denied
        state, rec = await rt.monitor.recommend(pool)
        return _json(keda_body(state, rec, rt.now()))

    @router.get("/v1/autoscale", tags=["autoscale"])
    async def autoscale_all(request: Request) -> Response:
        """Every known pool's recommendation."""
        if (denied := _deny_api(request)) is not None:
            return denied
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
        policy = await rt.policies.apply(text, "admin api", require=COMPLETE_POLICY)
        return _json({"version": policy.version, "applied": True})

    def _deny_admin(request: Request) -> Response | None:
        if auth.admin.open:
            return error(403, "admin API disabled: set [throttle] admin_token", None, "auth_error")
        return _deny(request, auth.admin)

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


def parse_since(text: str) -> float | None:
    """Epoch seconds from ``since``: a number, or an RFC 3339 timestamp (None when neither)."""
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            return None  # RFC 3339 requires an offset
        return moment.timestamp()
    return value if math.isfinite(value) and value >= 0 else None


def _tenant_summary(known: KnownTenant) -> dict[str, Any]:
    lim, st, act = known.usage.limits, known.usage.usage, known.activity
    return {
        "tenant": known.usage.tenant,
        "tier": lim.tier,
        "weight": lim.weight,
        "in_policy": known.in_policy,
        "usage": {
            "rate_remaining": finite(st.remaining),
            "rate_reset_s": st.reset_s,
            "in_flight": st.in_flight,
            "concurrency_limit": lim.concurrency or None,
            "daily_spent": st.day_spent,
            "daily_limit": lim.daily_budget or None,
            "monthly_spent": st.month_spent,
            "monthly_limit": lim.monthly_budget or None,
            "fair_share": st.fair_counters,
        },
        "recent": None
        if act is None
        else {
            "decisions": act.decisions,
            "allowed": act.allowed,
            "denied": act.denied,
            "last_ts": act.last_ts,
        },
    }


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors to HTTP codes (through
    :func:`infermeter.throttle.gateway_http.reply_for`)."""

    @app.exception_handler(ThrottleError)
    async def _domain(_: Request, exc: ThrottleError) -> Response:
        return _response(reply_for(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        reply = error(exc.status_code, str(exc.detail), None, "invalid_request_error")
        reply.headers.update(exc.headers or {})  # 405 keeps its Allow
        return reply

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return error(400, str(first["msg"]), param, "invalid_request_error")
