"""The collector's OpenAPI document, served at ``GET /openapi.json`` (``collector openapi``).

The collector answers its own routes (``/healthz``, ``/readyz``, ``/metrics``,
``/v1/signals``, ``/openapi.json``; another method on them is a 405 with ``Allow`` from this
document) and forwards every other path, any method, to the engine: status, headers and body
come back as the engine sent them (an unknown path is the engine's 404, a wrong method on an
engine route the engine's 405). The document names the engine routes the collector meters
(:data:`~infermeter.collector.settings.DEFAULT_METERED_PATHS`) and ``GET /v1/models``, with
the OpenAI schemas as vLLM takes them (``metered_paths`` as configured; one the document
does not know is described as the engine's) (``model`` optional: vLLM serves its one model), the
answers the collector adds itself (400 for its own headers, 413, 502, 504) and those of the
engine it passes back (400, 404). There are no credentials: the port is for the gateway,
which proves tenant identity with the shared secret's headers.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Sequence
from typing import Any, get_type_hints

from infermeter.collector.proxy import MAX_REQUEST_ID
from infermeter.collector.settings import DEFAULT_METERED_PATHS
from infermeter.kernel.engine_signals import EngineSignals
from infermeter.kernel.openai_schemas import (
    RESPONSE_SCHEMAS,
    chat_request,
    completion_request,
    embedding_request,
    inference_ok,
)
from infermeter.kernel.openapi import (
    JSON,
    SSE,
    Schema,
    document,
    error,
    json_response,
    operation,
    parameter,
    ref,
    response,
    service_paths,
)
from infermeter.kernel.tenancy import TAGS_HEADER

_JSON_TYPES: dict[Any, str] = {str: "string", float: "number", int: "integer", bool: "boolean"}


def signals_schema() -> Schema:
    """:class:`EngineSignals` as JSON Schema, from its fields (the contract is defined once)."""
    props: dict[str, Schema] = {}
    required = []
    for f in dataclasses.fields(EngineSignals):
        hint = get_type_hints(EngineSignals)[f.name]
        if isinstance(hint, types.UnionType):  # X | None
            kinds = [_JSON_TYPES.get(a, "null") for a in hint.__args__]
            props[f.name] = {"type": kinds}
        else:
            props[f.name] = {"type": _JSON_TYPES[hint]}
        if f.default is dataclasses.MISSING:
            required.append(f.name)
    return {"type": "object", "required": required, "properties": props}


def _engine_errors() -> dict[str, Schema]:
    return {
        "400": error(
            "Invalid request: the collector's own check of `x-infermeter-request-id` or "
            "`x-infermeter-tags` (`error.param` names the header), or the engine's validation"
        ),
        "404": error("The engine does not serve that model (or route)"),
        "413": error("Request body over the collector's `max_body_bytes`"),
        "502": error("The engine is unreachable"),
        "504": error("The engine did not answer within `read_timeout_s`"),
    }


def _headers(max_tags_bytes: int) -> list[Schema]:
    return [
        parameter(
            "header",
            "x-infermeter-request-id",
            {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_ID},
            "The id metering bills under; honoured only with the gateway's shared secret, "
            "otherwise kept as the `client_request_id` tag",
        ),
        parameter(
            "header",
            TAGS_HEADER,
            {"type": "string", "maxLength": max_tags_bytes},
            "Usage tags, `key=value` pairs (at most `max_tags_bytes`)",
        ),
    ]


def _metered(op_id: str, summary: str, body: str, ok: Schema, tags_bytes: int) -> Schema:
    return operation(
        op_id,
        summary,
        {"200": ok, **_engine_errors()},
        body=ref(body) if body else {},
        parameters=_headers(tags_bytes),
        security=[],
        tags=["engine"],
        description="Forwarded to the engine and metered: one usage record per request "
        "(a client abort included, with the tokens so far).",
    )


def _metered_paths(paths: Sequence[str], tags_bytes: int) -> dict[str, Schema]:
    rid = {
        "x-infermeter-request-id": {"description": "the billed id", "schema": {"type": "string"}}
    }
    known = {
        "/v1/chat/completions": ("chat", "Chat completion", "ChatRequest",
                                 inference_ok("ChatCompletion", rid)),
        "/v1/completions": ("completion", "Text completion", "CompletionRequest",
                            inference_ok("Completion", rid)),
        "/v1/embeddings": ("embeddings", "Embeddings", "EmbeddingRequest",
                           json_response("The embeddings", ref("Embeddings"), rid)),
    }  # fmt: skip
    out: dict[str, Schema] = {}
    for path in paths:
        if path in known:
            op_id, summary, body, ok = known[path]
            out[path] = {"post": _metered(op_id, summary, body, ok, tags_bytes)}
        else:  # a route the engine defines: its body and answer are the engine's
            ok = response("The engine's answer", {JSON: {}, SSE: {}})
            op_id = "metered" + path.replace("/", "_")
            out[path] = {"post": _metered(op_id, f"{path} (metered)", "", ok, tags_bytes)}
    return out


def collector_openapi(
    metered_paths: Sequence[str] = DEFAULT_METERED_PATHS,
    max_tags_bytes: int = 512,
    version: str = "1",
) -> Schema:
    """The collector's OpenAPI 3.1 document for the routes it meters (as configured)."""
    paths: dict[str, Schema] = {
        **_metered_paths(metered_paths, max_tags_bytes),
        "/v1/models": {
            "get": operation(
                "models",
                "The engine's models (forwarded, not metered)",
                {"200": json_response("OpenAI model list", ref("ModelList")), **_engine_errors()},
                security=[],
                tags=["engine"],
            )
        },
        "/v1/signals": {
            "get": operation(
                "signals",
                "The latest engine signals (what the throttle receives, the gateway polls)",
                {
                    "200": json_response(
                        "One object per model", {"type": "array", "items": ref("EngineSignals")}
                    )
                },
                security=[],
                tags=["operations"],
            )
        },
        **service_paths(
            readiness="The engine's `/health`; a spool refusing writes; a dependency refusing "
            "the collector's token.",
            metrics="Collector metrics (requests, tokens, records, spool) and GPU series under "
            "DCGM-exporter names",
        ),
    }
    schemas = {
        **RESPONSE_SCHEMAS,
        "ChatRequest": chat_request(required=("messages",)),
        "CompletionRequest": completion_request(required=("prompt",)),
        "EmbeddingRequest": embedding_request(required=("input",)),
        "EngineSignals": signals_schema(),
    }
    return document(
        "infermeter collector",
        version,
        "Sidecar in front of one engine replica: every path other than its own is forwarded "
        "to the engine unchanged (any method; the engine's status, headers and body); the "
        "inference routes are metered.",
        paths,
        schemas,
    )
