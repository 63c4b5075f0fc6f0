"""OpenAPI 3.1 documents for the services that answer outside a framework.

The throttle and metering are FastAPI apps and get their documents from it; the gateway's
inference front, the collector and the simulator are raw ASGI, so each assembles its own
from these parts: operation, parameter and response builders, the routes every service has
(``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``) and the OpenAI schemas of
:mod:`infermeter.kernel.openai_schemas`. Each serves its document at ``GET /openapi.json``
and its CLI prints it (``infermeter gateway openapi``, ``collector openapi``,
``engine simulate openapi``). A raw-ASGI service answers 405 from the same document
(:func:`allowed_methods`, :func:`method_not_allowed`), so a route it serves is a route it
documents.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from infermeter.kernel.asgi import Send, send_json
from infermeter.kernel.openai_errors import ERROR_SCHEMA, error_body

Schema = dict[str, Any]
OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
SSE = "text/event-stream"
PROMETHEUS = "text/plain"  # the exposition format; its version parameter varies by client
BEARER = "bearer"
BEARER_SCHEME: Schema = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key or service token: `Authorization: Bearer <token>`.",
}
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
RETRY_AFTER: Schema = {
    "description": "Seconds to wait before retrying",
    "schema": {"type": "string"},
}
STATUS_SCHEMA: Schema = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string"},
        "problems": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def ref(name: str) -> Schema:
    """A reference to ``#/components/schemas/<name>``."""
    return {"$ref": f"#/components/schemas/{name}"}


def response(
    description: str,
    media: Mapping[str, Schema] | None = None,
    headers: Mapping[str, Schema] | None = None,
) -> Schema:
    """A response object: ``media`` maps a media type to its schema."""
    out: Schema = {"description": description}
    if media:
        out["content"] = {kind: {"schema": schema} for kind, schema in media.items()}
    if headers:
        out["headers"] = dict(headers)
    return out


def json_response(
    description: str, schema: Schema, headers: Mapping[str, Schema] | None = None
) -> Schema:
    """A response with a JSON body."""
    return response(description, {JSON: schema}, headers)


def error(description: str, headers: Mapping[str, Schema] | None = None) -> Schema:
    """A response whose body is the OpenAI error body (``#/components/schemas/Error``)."""
    return json_response(description, ref("Error"), headers)


def parameter(
    where: str, name: str, schema: Schema, description: str, *, required: bool = False
) -> Schema:
    """A ``query``, ``header`` or ``path`` parameter (path parameters are always required)."""
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }


def operation(
    operation_id: str,
    summary: str,
    responses: Mapping[str, Schema],
    *,
    description: str = "",
    body: Schema | None = None,
    parameters: Sequence[Schema] = (),
    security: Sequence[str] | None = None,
    tags: Sequence[str] = (),
) -> Schema:
    """An operation; ``body`` is a required JSON request body, ``security`` the names of the
    schemes it needs (``[]`` says explicitly that it needs none)."""
    out: Schema = {"operationId": operation_id, "summary": summary, "responses": dict(responses)}
    if description:
        out["description"] = description
    if tags:
        out["tags"] = list(tags)
    if parameters:
        out["parameters"] = list(parameters)
    if body is not None:
        out["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    if security is not None:
        out["security"] = [{name: []} for name in security]
    return out


def metrics_path(description: str) -> dict[str, Schema]:
    """``GET /metrics``: the Prometheus exposition (no credentials)."""
    return {
        "/metrics": {
            "get": operation(
                "metrics",
                "Prometheus exposition",
                {"200": response(description, {PROMETHEUS: {"type": "string"}})},
                security=[],
                tags=["operations"],
            ),
        },
    }


def openapi_path() -> dict[str, Schema]:
    """``GET /openapi.json``: the document itself (no credentials)."""
    return {
        "/openapi.json": {
            "get": operation(
                "openapi",
                "This document",
                {"200": json_response("OpenAPI 3.1 document", {"type": "object"})},
                security=[],
                tags=["operations"],
            ),
        },
    }


def service_paths(*, readiness: str, metrics: str) -> dict[str, Schema]:
    """``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``, as every infermeter
    service answers them (no credentials)."""
    status = ref("Status")
    return {
        "/healthz": {
            "get": operation(
                "healthz",
                "Alive",
                {"200": json_response("The process answers", status)},
                security=[],
                tags=["operations"],
            ),
        },
        "/readyz": {
            "get": operation(
                "readyz",
                "Ready: dependencies reachable",
                {
                    "200": json_response("Ready", status),
                    "503": json_response("Not ready; `problems` names each cause", status),
                },
                description=readiness,
                security=[],
                tags=["operations"],
            ),
        },
        **metrics_path(metrics),
        **openapi_path(),
    }


def document(
    title: str,
    version: str,
    description: str,
    paths: Mapping[str, Schema],
    schemas: Mapping[str, Schema],
    *,
    security_schemes: Mapping[str, Schema] | None = None,
) -> Schema:
    """The whole document; ``Error`` and ``Status`` are always among its schemas."""
    components: Schema = {"schemas": {"Error": ERROR_SCHEMA, "Status": STATUS_SCHEMA, **schemas}}
    if security_schemes:
        components["securitySchemes"] = dict(security_schemes)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "paths": dict(paths),
        "components": components,
    }


def allowed_methods(doc: Schema, path: str) -> tuple[str, ...] | None:
    """The methods ``doc`` documents for the literal ``path`` (upper case, HEAD wherever GET
    is), or None when it does not document that path."""
    item = doc["paths"].get(path)
    if item is None:
        return None
    methods = [m.upper() for m in HTTP_METHODS if m in item]
    if "GET" in methods and "HEAD" not in methods:
        methods.insert(methods.index("GET") + 1, "HEAD")
    return tuple(methods)


async def method_not_allowed(send: Send, allow: Iterable[str], body: bytes | None = None) -> None:
    """A 405 with ``Allow`` and a JSON body (the OpenAI error body unless ``body`` is given)."""
    payload = body if body is not None else error_body(
        405, "Method Not Allowed", "invalid_request_error"
    )  # fmt: skip
    await send_json(send, 405, payload, [(b"allow", ", ".join(allow).encode())])


async def not_found(send: Send, path: str) -> None:
    """A 404 with the OpenAI error body: ``path`` is not a route of this service."""
    await send_json(send, 404, error_body(404, f"No route {path!r}", "not_found_error"))


def document_bytes(doc: Schema) -> bytes:
    """``doc`` as the JSON bytes ``GET /openapi.json`` answers."""
    return json.dumps(doc, separators=(",", ":")).encode()


def serve_built(app: Any, build: Callable[[], Schema]) -> None:
    """Make a FastAPI ``app`` serve ``build()``'s document at its ``openapi_url`` (built once,
    on first request) instead of the one FastAPI derives (FastAPI's documented override)."""
    cache: list[Schema] = []

    def openapi() -> Schema:
        if not cache:
            cache.append(build())
        return cache[0]

    app.openapi = openapi
