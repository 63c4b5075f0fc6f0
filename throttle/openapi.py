"""The throttle API's OpenAPI 3.1 document: every route's parameters, bodies, answers, scopes.

The handlers read their bodies and query parameters themselves (the gateway endpoints are
served by the ASGI fast path, ahead of FastAPI), so the document is written here from the
kernel's builders (:mod:`infermeter.kernel.openapi`) and the schemas of
:mod:`infermeter.throttle.openapi_schemas`; :func:`install` makes the app serve it at
``/openapi.json``. ``tests/throttle/test_openapi_fuzz.py`` checks that it names exactly the
app's routes, that it is valid, and runs schemathesis with it against a real server.

Statuses, the same wherever they can occur: 400 a body, query parameter or header that does
not match this document (``param`` names it), 401 a missing or wrong token, 403 the admin API
is off (no ``admin_token``) or an nginx-style refusal, 404 an unknown reservation or pool,
413 a body over ``max_body_bytes`` (any route), 422 a valid request refused on its content
(a policy that is incomplete or inconsistent, a signal dated outside the clock-skew bound),
429 a refusal (admission, or a full pool/replica table), 503 the shared state is unreachable.
Outside the document: an unknown path is 404 and a method a path does not list is 405 with
``Allow``, both with the OpenAI error body.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from infermeter.kernel.openapi import (
    BEARER,
    BEARER_SCHEME,
    JSON,
    RETRY_AFTER,
    document,
    error,
    json_response,
    operation,
    parameter,
    ref,
    response,
    service_paths,
)
from infermeter.kernel.service_auth import SERVICE_TOKEN_HEADER
from infermeter.throttle.api import MAX_TENANTS_LISTED
from infermeter.throttle.gateway_http import (
    CHECK_METHODS,
    DENY_STATUS_HEADER,
    MAX_TOKENS_HEADER,
    MODEL_HEADER,
    ORIGINAL_LENGTH_HEADER,
)
from infermeter.throttle.openapi_schemas import SCHEMAS, Schema

SERVICE_TOKEN = "service_token"
SCOPES = {
    "decisions": "admit, settle (`[throttle] api_token`)",
    "signals": "POST /v1/signals (`signals_token`, else the decisions token)",
    "read": "tenants, decisions, autoscale (`read_token`, else the decisions token)",
    "admin": "GET/PUT /v1/policy (`admin_token`; without one the admin API is off: 403)",
}
ERRORS: dict[int, str] = {
    400: "The request does not match this document; `param` names the field",
    401: "Missing or invalid token (`param` names the header)",
    403: "The admin API is off: set `[throttle] admin_token`",
    404: "Not found (`param` names what)",
    413: "Body larger than `max_body_bytes`",
    422: "Refused on its content; `param` names the field",
    429: "A bounded table is full (`param`: `pool` or `replica`)",
    503: "The shared state backend is unreachable (fail-closed)",
}
HEADER: Schema = {"schema": {"type": "string"}}
RATE_HEADERS: dict[str, Schema] = {
    "RateLimit-Policy": {**HEADER, "description": "IETF RateLimit-Policy (structured list)"},
    "RateLimit": {**HEADER, "description": "IETF RateLimit (structured list)"},
}
DENY_HEADERS = {**RATE_HEADERS, "Retry-After": RETRY_AFTER}
CHECK_HEADERS = {
    **RATE_HEADERS,
    "X-Infermeter-Tenant": {**HEADER, "description": "the tenant the request was counted to"},
}


def _errors(statuses: Sequence[int], overrides: dict[int, str] | None = None) -> dict[str, Any]:
    text = {**ERRORS, **(overrides or {})}
    out = {str(s): error(text[s]) for s in statuses}
    if "401" in out:
        out["401"]["headers"] = {"WWW-Authenticate": HEADER}
    return out


def _op(
    op_id: str,
    summary: str,
    scope: str,
    answers: dict[str, Schema],
    statuses: Sequence[int],
    *,
    body: Schema | None = None,
    parameters: Sequence[Schema] = (),
    tags: Sequence[str] = (),
    description: str = "",
    overrides: dict[int, str] | None = None,
) -> Schema:
    responses = {**answers, **_errors((401, 413, *statuses), overrides)}
    out = operation(
        op_id,
        summary,
        dict(sorted(responses.items())),
        parameters=parameters,
        tags=tags,
        description=f"{description}\n\nToken scope: `{scope}`.".strip(),
    )
    out["security"] = [{BEARER: [scope]}]
    if body is not None:
        out["requestBody"] = body
    return out


def _json_body(schema: Schema, description: str) -> Schema:
    return {"required": True, "description": description, "content": {JSON: {"schema": schema}}}


def _header(name: str, schema: Schema, description: str) -> Schema:
    return parameter("header", name, schema, description)


CHECK_PARAMETERS = [
    _header(MODEL_HEADER, {"type": "string"}, "the model asked for (priced by the policy)"),
    _header(
        MAX_TOKENS_HEADER,
        {"type": "integer", "minimum": 0},
        "completion tokens to reserve (default: the policy's `check_max_tokens`)",
    ),
    _header(
        ORIGINAL_LENGTH_HEADER,
        {"type": "integer", "minimum": 0},
        "the original request's Content-Length, to estimate its prompt",
    ),
    _header(
        DENY_STATUS_HEADER,
        {"type": "string", "enum": ["403", "429"]},
        "`403` to refuse with 403 (nginx auth_request passes only 2xx/401/403)",
    ),
]


def _check(method: str, with_path: bool) -> Schema:
    """One method of ``/v1/check`` (or of its Envoy path-prefix form)."""
    head = method == "head"
    denied = {} if head else {JSON: ref("AdmitDenied")}
    answers = {
        "200": response(
            "Allowed (no body): the reservation id and the tenant in headers",
            headers={
                **CHECK_HEADERS,
                "X-Infermeter-Reservation-Id": {**HEADER, "description": "settle with it"},
            },
        ),
        "403": response(
            "Refused, when asked with X-Infermeter-Deny-Status: 403",
            denied,
            {**DENY_HEADERS, **CHECK_HEADERS},
        ),
        "429": response(
            "Refused: reason in X-Infermeter-Reason and the body",
            denied,
            {**DENY_HEADERS, **CHECK_HEADERS},
        ),
    }
    errors = _errors((400, 401, 413, 503), {400: "A numeric header is not a number"})
    if head:
        errors = {code: {"description": e["description"]} for code, e in errors.items()}
    suffix = "_path" if with_path else ""
    params = list(CHECK_PARAMETERS)
    if with_path:
        params.insert(
            0, parameter("path", "path", {"type": "string", "minLength": 1}, "the original path")
        )
    out = operation(
        f"check{suffix}_{method}",
        "Header-only admission (Envoy ext_authz, nginx auth_request)",
        dict(sorted({**answers, **errors}.items())),
        description=(
            "200 allows, 429 (or 403) refuses with Retry-After and the RateLimit fields. The "
            "client's own `Authorization` (its API key) picks the tenant; the decisions token "
            f"comes in `{SERVICE_TOKEN_HEADER}`. The body, if any, is not read."
            + (" Envoy's path_prefix form: the original path follows." if with_path else "")
        ),
        parameters=params,
        tags=["proxy"],
    )
    out["security"] = [{SERVICE_TOKEN: ["decisions"]}]
    return out


def paths() -> dict[str, dict[str, Schema]]:
    """Every route of the throttle, by path and method."""
    admit_ok = json_response("Admitted: a reservation", ref("AdmitAllowed"), RATE_HEADERS)
    refused = json_response("Refused: why and when to retry", ref("AdmitDenied"), DENY_HEADERS)
    unavailable = json_response(
        "Refused because the shared state is unreachable (fail-closed), or it failed",
        {"oneOf": [ref("AdmitDenied"), ref("Error")]},
    )
    tenant = parameter("path", "tenant", {"type": "string"}, "tenant name")
    pool = parameter("path", "pool", {"type": "string"}, "pool name")
    limit = parameter(
        "query",
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_TENANTS_LISTED, "default": 1000},
        "how many tenants, sorted by name",
    )
    since = parameter(
        "query",
        "since",
        {"type": "string", "default": "0"},
        "RFC 3339 with an offset (2026-11-24T15:00:00Z) or epoch seconds >= 0",
    )
    policy_body = {
        "required": True,
        "description": "A complete policy: TOML text or a JSON object",
        "content": {
            JSON: {"schema": ref("PolicyDocument")},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
    check = {m.lower(): _check(m.lower(), False) for m in CHECK_METHODS}
    check_path = {m.lower(): _check(m.lower(), True) for m in CHECK_METHODS}
    return {
        "/v1/admit": {
            "post": _op(
                "admit",
                "Reserve an inference's estimated cost",
                "decisions",
                {"200": admit_ok, "429": refused, "503": unavailable},
                (400,),
                body=_json_body(ref("AdmitBody"), "What the gateway is about to send"),
                tags=["gateway"],
            ),
        },
        "/v1/settle": {
            "post": _op(
                "settle",
                "Replace a reservation's estimate by the actual usage",
                "decisions",
                {"200": json_response("Settled (or already settled)", ref("Settled"))},
                (400, 404, 503),
                body=_json_body(ref("SettleBody"), "The actual usage"),
                tags=["gateway"],
                overrides={404: "Unknown (or expired) reservation id"},
            ),
        },
        "/v1/check": check,
        "/v1/check/{path}": check_path,
        "/v1/signals": {
            "post": _op(
                "signals",
                "Push engine signals (one object or an array)",
                "signals",
                {"200": json_response("Stored", ref("SignalsAccepted"))},
                (400, 422, 429, 503),
                body=_json_body(ref("Signals"), "Collectors' engine signals"),
                tags=["collector"],
                overrides={422: "`[i].ts` is outside the clock-skew bound; `param` names it"},
            ),
        },
        "/v1/tenants": {
            "get": _op(
                "tenants",
                "Tenants known (policy or recent decisions)",
                "read",
                {"200": json_response("Tenants, sorted by name", ref("Tenants"))},
                (400, 503),
                parameters=[limit],
                tags=["dashboards"],
            ),
        },
        "/v1/tenants/{tenant}/usage": {
            "get": _op(
                "tenant_usage",
                "A tenant's limits and current standing",
                "read",
                {"200": json_response("Limits, budgets, in flight", ref("TenantUsage"))},
                (503,),
                parameters=[tenant],
                tags=["gateway"],
            ),
        },
        "/v1/tenants/{tenant}/decisions": {
            "get": _op(
                "tenant_decisions",
                "This replica's recent decisions for a tenant",
                "read",
                {"200": json_response("Decisions, oldest first", ref("Decisions"))},
                (400,),
                parameters=[tenant, since],
                tags=["dashboards"],
            ),
        },
        "/v1/autoscale": {
            "get": _op(
                "autoscale_all",
                "Every known pool's replica recommendation",
                "read",
                {"200": json_response("One entry per pool", ref("AutoscaleAll"))},
                (503,),
                tags=["autoscale"],
            ),
        },
        "/v1/autoscale/{pool}": {
            "get": _op(
                "autoscale",
                "A pool's replica recommendation (KEDA metrics-api)",
                "read",
                {"200": json_response("Read `desired_replicas`", ref("Autoscale"))},
                (404, 503),
                parameters=[pool],
                tags=["autoscale"],
                overrides={404: "The pool is neither declared nor reporting"},
            ),
        },
        "/v1/policy": {
            "get": _op(
                "get_policy",
                "The policy in force",
                "admin",
                {"200": json_response("Version, source, document", ref("PolicyState"))},
                (403,),
                tags=["admin"],
            ),
            "put": _op(
                "put_policy",
                "Replace the policy",
                "admin",
                {"200": json_response("In force", ref("PolicyApplied"))},
                (403, 422, 503),
                body=policy_body,
                tags=["admin"],
                overrides={422: "Invalid or incomplete policy (the old one stays)"},
            ),
        },
    }


def build() -> Schema:
    """The whole document."""
    scopes = "; ".join(f"`{name}`: {what}" for name, what in SCOPES.items())
    service = {
        "type": "apiKey",
        "in": "header",
        "name": SERVICE_TOKEN_HEADER,
        "description": "The decisions token, from a proxy whose Authorization is the client's",
    }
    ops = {
        **paths(),
        **service_paths(
            readiness="The state backend answers (503 while deciding locally)",
            metrics="The throttle's metrics (promtool-clean)",
        ),
    }
    for item in ops.values():  # the body limit holds on every route
        for op in item.values():
            op["responses"].setdefault("413", error(ERRORS[413]))
    return document(
        "infermeter throttle",
        "1",
        "Compute-priced admission (reserve, then settle), fair share under pressure, "
        "header-only checks for nginx/Envoy, and autoscale signals for KEDA. Errors: the "
        "OpenAI error body, 4xx naming the field.",
        ops,
        SCHEMAS,
        security_schemes={
            BEARER: {**BEARER_SCHEME, "description": f"Scoped bearer tokens. {scopes}."},
            SERVICE_TOKEN: service,
        },
    )
