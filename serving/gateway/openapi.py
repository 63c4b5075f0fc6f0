"""The gateway's OpenAPI document: every route it answers, served at ``GET /openapi.json``.

The OpenAI routes (answered by :mod:`front`), models, async jobs and their event streams
(:mod:`api`) need an API key (``Authorization: Bearer <key>``); the operational routes do
not. Request bodies are validated as :mod:`requests` validates them; every other OpenAI or
vLLM field passes through to the upstream, whose own 4xx answers (an OpenAI error body) pass
back unchanged. The statuses are those :func:`front.error_parts` maps the gateway's errors to.
"""

from __future__ import annotations

from collections.abc import Sequence

from infermeter.kernel.openai_schemas import (
    RESPONSE_SCHEMAS,
    chat_request,
    completion_request,
    embedding_request,
    inference_ok,
)
from infermeter.kernel.openapi import (
    BEARER,
    BEARER_SCHEME,
    RETRY_AFTER,
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

SECURED = [BEARER]
REQUEST_ID: Schema = {
    "description": "The request id metering bills under",
    "schema": {"type": "string"},
}
RATE_HEADERS: dict[str, Schema] = {
    "retry-after": RETRY_AFTER,
    "ratelimit-policy": {"description": "IETF RateLimit-Policy", "schema": {"type": "string"}},
    "ratelimit": {"description": "IETF RateLimit", "schema": {"type": "string"}},
}
JOB: Schema = {
    "type": "object",
    "required": ["id", "object", "status", "endpoint", "created_at", "status_url", "events_url"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "job"},
        "status": {"enum": ["queued", "running", "waiting", "succeeded", "failed"]},
        "model": {"type": ["string", "null"]},
        "endpoint": {"enum": ["/v1/chat/completions", "/v1/completions"]},
        "created_at": {"type": "number"},
        "started_at": {"type": ["number", "null"]},
        "finished_at": {"type": ["number", "null"]},
        "attempts": {"type": "integer"},
        "result": {"type": ["object", "null"]},
        "usage": {"type": ["object", "null"]},
        "cost_usd": {"type": ["number", "null"]},
        "error": {"type": ["string", "null"]},
        "status_url": {"type": "string"},
        "events_url": {"type": "string"},
    },
}
# What requests.parse_inference checks; the rest is the upstream's to judge.
_STRICT: dict[str, Schema | None] = {
    "stream": {"type": "boolean"},
    "stream_options": {"type": ["object", "null"]},
}
_PROMPT: Schema = {
    "anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}]
}
JOB_EVENT: Schema = {
    "type": "object",
    "description": "One job event; its `id` resumes the stream (`Last-Event-ID`)",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string"},
        "event": {"enum": ["queued", "started", "throttled", "delta", "done", "failed"]},
        "data": {"type": "string", "pattern": r"^\{.*\}$", "description": "a JSON object"},
    },
}


def _schemas(models: Sequence[str]) -> dict[str, Schema]:
    model: Schema = {"type": "string", "minLength": 1, "description": "a model this gateway routes"}
    if models:
        model["enum"] = list(models)
    strict = {**_STRICT, "model": model}
    return {
        **RESPONSE_SCHEMAS,
        "ChatRequest": chat_request(strict),
        "CompletionRequest": completion_request({**strict, "prompt": _PROMPT}),
        "EmbeddingRequest": embedding_request({"model": model, "stream": {"const": False}}),
        "Job": JOB,
    }


def _errors(*statuses: str) -> dict[str, Schema]:
    text = {
        "400": "Invalid request (the field is named in `error.param`), the gateway's or the "
        "upstream's",
        "401": "Missing or unknown API key",
        "404": "No such model (or job) for this key",
        "413": "Request body over the gateway's limit",
        "429": "The throttle denied admission (a job: the tenant's job cap, "
        "`error.param` `max_jobs_per_tenant`)",
        "502": "The upstream failed",
        "503": "Throttle, job queue or every replica unavailable",
    }
    headers = {"429": RATE_HEADERS, "503": {"retry-after": RETRY_AFTER}}
    return {s: error(text[s], headers.get(s)) for s in statuses}


def _inference(op_id: str, summary: str, body: str, result: Schema) -> Schema:
    return operation(
        op_id,
        summary,
        {"200": result, **_errors("400", "401", "404", "413", "429", "502", "503")},
        body=ref(body),
        security=SECURED,
        tags=["inference"],
        description="Authenticated, admitted by the throttle, then routed to the least-loaded "
        "replica of the model's pool (or its managed API); semantic-cache hits answer "
        "without an upstream call (`x-infermeter-cache: hit`).",
    )


def _paths() -> dict[str, Schema]:
    job_id = parameter("path", "job_id", {"type": "string"}, "the id `POST /v1/jobs` gave")
    rid = {"x-infermeter-request-id": REQUEST_ID}
    return {
        "/v1/chat/completions": {
            "post": _inference(
                "chat", "Chat completion", "ChatRequest", inference_ok("ChatCompletion", rid)
            ),
        },
        "/v1/completions": {
            "post": _inference(
                "completion",
                "Text completion",
                "CompletionRequest",
                inference_ok("Completion", rid),
            ),
        },
        "/v1/embeddings": {
            "post": _inference(
                "embeddings",
                "Embeddings",
                "EmbeddingRequest",
                json_response("The embeddings", ref("Embeddings"), rid),
            ),
        },
        "/v1/models": {
            "get": operation(
                "models",
                "Models this gateway routes",
                {"200": json_response("OpenAI model list", ref("ModelList")), **_errors("401")},
                security=SECURED,
                tags=["inference"],
            ),
        },
        "/v1/jobs": {
            "post": operation(
                "submit_job",
                "Run a chat or completion request as an async job",
                {
                    "202": json_response(
                        "Accepted before any inference",
                        ref("Job"),
                        {"location": {"description": "status URL", "schema": {"type": "string"}}},
                    ),
                    **_errors("400", "401", "404", "413", "429", "503"),
                },
                body={"anyOf": [ref("ChatRequest"), ref("CompletionRequest")]},
                security=SECURED,
                tags=["jobs"],
                description="A chat body (`messages`) or a completion body (`prompt`); "
                "`stream` is ignored (results come by `GET /v1/jobs/{job_id}/events`).",
            ),
        },
        "/v1/jobs/{job_id}": {
            "get": operation(
                "get_job",
                "A job's status, result, usage and cost",
                {"200": json_response("The job", ref("Job")), **_errors("401", "404")},
                parameters=[job_id],
                security=SECURED,
                tags=["jobs"],
            ),
        },
        "/v1/jobs/{job_id}/events": {
            "get": operation(
                "job_events",
                "A job's events as server-sent events",
                {
                    "200": response(
                        "Events `queued`, `started`, `throttled`, `delta`, then `done` or "
                        "`failed`; ids resume with `Last-Event-ID`",
                        {SSE: ref("JobEvent")},
                    ),
                    **_errors("400", "401", "404"),
                },
                parameters=[
                    job_id,
                    parameter(
                        "header", "Last-Event-ID", {"type": "string"}, "resume after this event id"
                    ),
                    parameter(
                        "query",
                        "last_event_id",
                        {"type": "string"},
                        "the same, for clients that cannot set headers",
                    ),
                ],
                security=SECURED,
                tags=["jobs"],
                description="The stream ends after `done` or `failed`, or at once when "
                "resumed after the last event of a finished job.",
            ),
        },
        **service_paths(
            readiness="The throttle, metering (when configured) and the job backend.",
            metrics="Gateway metrics (responses, throttle, cache, queue, outstanding requests)",
        ),
    }


def gateway_openapi(models: Sequence[str] = (), version: str = "1") -> Schema:
    """The gateway's OpenAPI 3.1 document; ``models`` (those it routes) narrow ``model``."""
    return document(
        "infermeter gateway",
        version,
        "OpenAI-compatible gateway: API keys, throttle admission, routing, async jobs, cache.",
        _paths(),
        {**_schemas(models), "JobEvent": JOB_EVENT},
        security_schemes={BEARER: BEARER_SCHEME},
    )
