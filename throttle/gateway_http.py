"""The per-request gateway endpoints (admit, settle, check) as plain functions and a pure ASGI
fast path.

Every admission is on a gateway's critical path, so ``POST /v1/admit``, ``POST /v1/settle``
and ``/v1/check`` are served by :class:`FastPath`, a plain ASGI wrapper that skips the web
framework's routing and dependency machinery; the FastAPI routes in :mod:`infermeter.throttle.api`
call the same :class:`GatewayHandlers` (and document them in OpenAPI). Only HTTP ↔ domain mapping
happens here.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, Field, ValidationError

from infermeter.kernel.asgi import ASGIApp, BodyTooLarge, read_body, replay
from infermeter.kernel.openai_errors import error_body
from infermeter.kernel.service_auth import SERVICE_TOKEN_HEADER
from infermeter.throttle.algorithms.budgets import WindowCache
from infermeter.throttle.errors import (
    ClockSkew,
    LimitReached,
    PolicyError,
    RequestError,
    StorageError,
    ThrottleError,
    UnknownPool,
    UnknownReservation,
)
from infermeter.throttle.headers import rate_limit_headers
from infermeter.throttle.service import AdmitRequest, AdmitResult

if TYPE_CHECKING:
    from infermeter.throttle.app import Runtime

JSON = "application/json"
DENY_STATUS_HEADER = "x-infermeter-deny-status"
MODEL_HEADER = "x-infermeter-model"
MAX_TOKENS_HEADER = "x-infermeter-max-tokens"
ORIGINAL_LENGTH_HEADER = "x-original-content-length"
# what /v1/check answers: Envoy's ext_authz forwards the client's method, nginx sends GET
CHECK_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CHECK_ALLOW = ", ".join(CHECK_METHODS)


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


@dataclass(slots=True)
class Reply:
    """A response before it is written: status, JSON body bytes (may be empty), headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, orjson.dumps(body), headers or {})


def error_reply(status: int, message: str, kind: str, param: str | None = None) -> Reply:
    """The OpenAI-style error body (:mod:`infermeter.kernel.openai_errors`) as a reply."""
    return Reply(status, error_body(status, message, kind, param), {})


def validation_reply(exc: ValidationError) -> Reply:
    """400 naming the first field at fault (``body`` when the body itself is: not JSON, not
    an object)."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or "body"
    return error_reply(400, f"{param}: {first['msg']}", "invalid_request_error", param)


def reply_for(exc: ThrottleError) -> Reply:
    """Map a domain error to its HTTP status (the only place that does): a request that does
    not match the API's schema is 400, one refused on its content (a policy, a signal's
    clock) 422."""
    if isinstance(exc, ClockSkew):
        return error_reply(422, str(exc), "invalid_request_error", exc.field)
    if isinstance(exc, RequestError):
        return error_reply(400, str(exc), "invalid_request_error", exc.field)
    if isinstance(exc, PolicyError):
        return error_reply(422, str(exc), "invalid_policy", exc.field or None)
    if isinstance(exc, LimitReached):
        return error_reply(429, str(exc), "limit_reached", exc.field)
    if isinstance(exc, UnknownReservation):
        return error_reply(404, str(exc), "not_found", "reservation_id")
    if isinstance(exc, UnknownPool):
        return error_reply(404, str(exc), "not_found", "pool")
    if isinstance(exc, StorageError):
        return error_reply(503, str(exc), "storage_unavailable", None)
    return error_reply(500, str(exc), "internal_error", None)


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def admit_body(result: AdmitResult) -> dict[str, Any]:
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
        "retry_after_s": finite(result.retry_after_s),
        "estimate": estimate,
        "tenant": result.tenant,
        "pool": result.pool,
        "tier": result.limits.tier,
        "pressure": result.pressure,
    }


class GatewayHandlers:
    """admit / settle / check on raw bytes and lower-case header mappings."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._scope = rt.auth.decisions
        self._windows = WindowCache()

    def authorized(self, headers: Mapping[str, str]) -> bool:
        return self._scope.allows(headers.get("authorization"))

    def unauthorized(self, header: str = "authorization") -> Reply:
        reply = error_reply(
            401, "missing or invalid bearer token (decisions scope)", "auth_error", header
        )
        if header == "authorization":
            reply.headers["WWW-Authenticate"] = "Bearer"
        return reply

    def _headers(self, result: AdmitResult) -> dict[str, str]:
        now = self._rt.now()
        day, month = self._windows.get(now)
        return rate_limit_headers(
            result.limits, result.unit, result.decision, day.end - now, month.end - now
        )

    async def admit(self, raw: bytes, headers: Mapping[str, str]) -> Reply:
        if not self.authorized(headers):
            return self.unauthorized()
        try:
            body = AdmitBody.model_validate_json(raw)
        except ValidationError as exc:
            return validation_reply(exc)
        tier = ""
        tenant = body.tenant
        if not tenant:
            who = self._rt.resolver.resolve(headers)
            tenant, tier = who.tenant, who.tier
        result = await self._rt.throttle.admit(
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
        status = 200 if result.allowed else (503 if result.reason == "unavailable" else 429)
        return json_reply(admit_body(result), status, self._headers(result))

    async def settle(self, raw: bytes, headers: Mapping[str, str]) -> Reply:
        if not self.authorized(headers):
            return self.unauthorized()
        try:
            body = SettleBody.model_validate_json(raw)
        except ValidationError as exc:
            return validation_reply(exc)
        done = await self._rt.throttle.settle(
            body.reservation_id,
            body.prompt_tokens,
            body.cached_prompt_tokens,
            body.completion_tokens,
            body.status,
        )
        unit = done.unit
        return json_reply(
            {
                "settled": True,
                "duplicate": done.duplicate,
                "reservation_id": done.reservation_id,
                "tenant": done.tenant,
                "estimate": {"cost": done.estimate, "unit": unit},
                "actual": {"cost": done.actual, "unit": unit},
                "delta": {"cost": done.delta, "unit": unit},
            }
        )

    async def check(self, raw: bytes, headers: Mapping[str, str]) -> Reply:
        """Header-only admission: tenant from the trusted header / API-key map.

        The caller is a proxy whose Authorization header is the end client's API key, so the
        decisions token comes in :data:`SERVICE_TOKEN_HEADER`.
        """
        if not self._scope.matches(headers.get(SERVICE_TOKEN_HEADER, "")):
            return self.unauthorized(SERVICE_TOKEN_HEADER)
        rt = self._rt
        who = rt.resolver.resolve(headers)
        doc = rt.policy().doc
        try:
            max_tokens = int(headers.get(MAX_TOKENS_HEADER, doc.check_max_tokens))
            length = headers.get(ORIGINAL_LENGTH_HEADER) or headers.get("content-length")
            chars = int(length) if length else None
        except ValueError:
            return error_reply(
                400, "numeric header expected", "invalid_request_error", MAX_TOKENS_HEADER
            )
        deny_status = 403 if headers.get(DENY_STATUS_HEADER, "") == "403" else 429
        result = await rt.throttle.admit(
            AdmitRequest(
                tenant=who.tenant,
                model=headers.get(MODEL_HEADER, ""),
                max_tokens=max(0, max_tokens),
                prompt_chars=max(0, chars) if chars is not None else None,
                tier_hint=who.tier,
                lease_s=doc.check_lease_s,
            )
        )
        out = self._headers(result)
        out["X-Infermeter-Tenant"] = who.tenant
        if result.allowed:
            out["X-Infermeter-Reservation-Id"] = result.reservation_id
            return Reply(200, b"", out)
        out["X-Infermeter-Reason"] = result.reason
        return json_reply(admit_body(result), deny_status, out)


# header names as sent, encoded once
_HEADER_NAMES = {
    name: name.encode("latin-1")
    for name in (
        "RateLimit-Policy",
        "RateLimit",
        "Retry-After",
        "X-Infermeter-Tenant",
        "X-Infermeter-Reservation-Id",
        "X-Infermeter-Reason",
        "WWW-Authenticate",
        "Allow",
    )
}
_CONTENT_TYPE = (b"content-type", JSON.encode())

Handler = Callable[[bytes, Mapping[str, str]], Awaitable[Reply]]


async def _not_allowed(_: bytes, __: Mapping[str, str]) -> Reply:
    reply = error_reply(405, "Method Not Allowed", "invalid_request_error")
    reply.headers["Allow"] = CHECK_ALLOW
    return reply


class FastPath:
    """Pure ASGI wrapper serving admit/settle/check directly, everything else by ``app``."""

    def __init__(
        self, app: ASGIApp, handlers: GatewayHandlers, max_body_bytes: int = 1024 * 1024
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/admit"): handlers.admit,
            ("POST", "/v1/settle"): handlers.settle,
        }
        self._check = handlers.check

    @staticmethod
    def _too_large(exc: BodyTooLarge) -> Handler:
        async def refuse(_: bytes, __: Mapping[str, str]) -> Reply:
            return error_reply(413, str(exc), "payload_too_large", "body")

        return refuse

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        handler = self._routes.get((method, path))
        if handler is None and (path == "/v1/check" or path.startswith("/v1/check/")):
            handler = self._check if method in CHECK_METHODS else _not_allowed
        try:
            body = await read_body(receive, self.max_body_bytes)
        except ConnectionResetError:
            return
        except BodyTooLarge as exc:
            handler, body = self._too_large(exc), b""
        if handler is None:
            await self.app(scope, replay(body, receive), send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            reply = await handler(body, headers)
        except ThrottleError as exc:
            reply = reply_for(exc)
        names = _HEADER_NAMES
        raw_headers = [
            (names.get(k) or k.encode("latin-1"), v.encode("latin-1"))
            for k, v in reply.headers.items()
        ]
        body = b"" if method == "HEAD" else reply.body
        if reply.body:
            raw_headers.append(_CONTENT_TYPE)
        raw_headers.append((b"content-length", b"%d" % len(reply.body)))
        await send({"type": "http.response.start", "status": reply.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})
