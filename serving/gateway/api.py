"""The gateway's HTTP API besides inference: models, async jobs, health and metrics.

This module only maps HTTP to the domain (errors map as in :func:`front.error_parts`).
The inference routes (``POST /v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``) are served by the raw ASGI :mod:`front`; these by Starlette::

    GET  /v1/models
    POST /v1/jobs                       202 + job id, status URL, events URL
    GET  /v1/jobs/{id}                  status, result, usage, cost
    GET  /v1/jobs/{id}/events           server-sent events; Last-Event-ID resumes
    GET  /healthz, /readyz, /metrics, /openapi.json

Every route is in :func:`openapi.gateway_openapi`'s document; an unknown path is a 404 and
a wrong method a 405 with ``Allow`` (:data:`EXCEPTION_HANDLERS`), both OpenAI error bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from infermeter.kernel.openai_errors import error_body
from infermeter.kernel.openapi import HTTP_METHODS, document_bytes
from infermeter.kernel.tenancy import TenantResolver
from infermeter.serving.gateway.errors import (
    AuthError,
    BodyTooLarge,
    GatewayError,
    JobNotFound,
    QueueError,
    RequestError,
)
from infermeter.serving.gateway.front import MAX_BODY_BYTES, authenticate, error_parts
from infermeter.serving.gateway.jobs.model import Job, JobBackend, JobEvent
from infermeter.serving.gateway.openapi import gateway_openapi
from infermeter.serving.gateway.pipeline import Caller, Pipeline
from infermeter.serving.gateway.requests import CHAT, COMPLETIONS, parse_inference

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
KEEPALIVE_S = 15.0
Readiness = Callable[[], Awaitable[dict[str, str]]]
ReadinessDetails = Callable[[], dict[str, Any]]
# (path, GatewayApi method, HTTP method)
ROUTES = (
    ("/v1/models", "models", "GET"),
    ("/v1/jobs", "submit_job", "POST"),
    ("/v1/jobs/{job_id}", "get_job", "GET"),
    ("/v1/jobs/{job_id}/events", "job_events", "GET"),
    ("/healthz", "healthz", "GET"),
    ("/readyz", "readyz", "GET"),
    ("/metrics", "metrics", "GET"),
    ("/openapi.json", "openapi", "GET"),
)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's routing 404 and 405 as OpenAI error bodies (``Allow`` kept)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code != 405:
        body = error_body(404, f"No route {request.url.path!r}", "not_found_error")
        return Response(body, 404, media_type="application/json")
    body = error_body(405, "Method Not Allowed", "invalid_request_error")
    # Starlette's order is a set's; the other services list GET, HEAD first (allowed_methods)
    methods = [m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip()]
    order = ["GET", "HEAD", *(m.upper() for m in HTTP_METHODS if m not in ("get", "head"))]
    allow = ", ".join(sorted(methods, key=lambda m: order.index(m) if m in order else 99))
    return Response(body, 405, {"allow": allow}, media_type="application/json")


EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    404: _http_error,
    405: _http_error,
}


def _map_error(exc: GatewayError) -> Response:
    status, body, headers = error_parts(exc)
    return Response(body, status, headers, media_type="application/json")


class GatewayApi:
    """Route handlers bound to one pipeline, resolver and job backend."""

    def __init__(
        self,
        pipeline: Pipeline,
        resolver: TenantResolver,
        jobs: JobBackend,
        *,
        registry: CollectorRegistry,
        job_deadline_s: float,
        readiness: Readiness,
        readiness_details: ReadinessDetails | None = None,
        closing: asyncio.Event | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.pipeline = pipeline
        self.resolver = resolver
        self.jobs = jobs
        self.registry = registry
        self._deadline_s = job_deadline_s
        self._readiness = readiness
        self._details = readiness_details
        self._closing = closing if closing is not None else asyncio.Event()
        self._now = now
        self._openapi: bytes | None = None
        self.responses = Counter(
            "infermeter_gateway_responses",
            "Responses by route and HTTP status",
            ["route", "code"],
            registry=registry,
        )

    def caller(self, request: Request) -> Caller:
        """Authenticate: a known API key (or the trusted gateway-secret headers)."""
        return authenticate(self.resolver, request.scope["headers"])

    async def models(self, request: Request) -> Response:
        """The models this gateway routes, in OpenAI's list shape."""
        try:
            self.caller(request)
        except AuthError as exc:
            return _map_error(exc)
        data = [
            {
                "id": model,
                "object": "model",
                "created": 0,
                "owned_by": upstream.kind,
                "pool": upstream.pool,
            }
            for model, upstream in sorted(self.pipeline.pools.items())
        ]
        return Response(
            orjson.dumps({"object": "list", "data": data}), 200, media_type="application/json"
        )

    async def submit_job(self, request: Request) -> Response:
        """Accept a chat or completion request as a job: 202 before any inference."""
        try:
            caller = self.caller(request)
            raw = await request.body()
            if len(raw) > MAX_BODY_BYTES:
                raise BodyTooLarge(MAX_BODY_BYTES)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise RequestError(f"request body is not valid JSON: {exc}") from exc
            if not isinstance(body, dict):
                raise RequestError("request body must be a JSON object")
            endpoint = CHAT if "messages" in body else COMPLETIONS if "prompt" in body else ""
            if not endpoint:
                raise RequestError("a job needs 'messages' (chat) or 'prompt'", "messages")
            body.pop("stream", None)
            body.pop("stream_options", None)
            req = parse_inference(endpoint, orjson.dumps(body))
            upstream = self.pipeline.upstream_for(req.model)
            now = self._now()
            job = Job(
                id="job_" + uuid.uuid4().hex,
                pool=upstream.pool,
                tenant=caller.tenant,
                endpoint=endpoint,
                request=body,
                created_at=now,
                deadline_at=now + self._deadline_s,
                key_id=caller.key_id,
                tier=caller.tier,
                tags=dict(caller.tags),
            )
            await self.jobs.submit(job)
        except GatewayError as exc:
            resp = _map_error(exc)
            self.responses.labels("/v1/jobs", str(resp.status_code)).inc()
            return resp
        self.responses.labels("/v1/jobs", "202").inc()
        public = job.public()
        return Response(
            orjson.dumps(public),
            202,
            {"location": public["status_url"]},
            media_type="application/json",
        )

    async def _owned_job(self, request: Request) -> Job:
        caller = self.caller(request)
        job_id = request.path_params["job_id"]
        job = await self.jobs.get(job_id)
        if job is None or job.tenant != caller.tenant:
            raise JobNotFound(f"No job with id {job_id!r}.")
        return job

    async def get_job(self, request: Request) -> Response:
        """The job's status and, when finished, its result, usage and cost."""
        try:
            job = await self._owned_job(request)
        except GatewayError as exc:
            return _map_error(exc)
        return Response(orjson.dumps(job.public()), 200, media_type="application/json")

    async def job_events(self, request: Request) -> Response:
        """Server-sent events of a job, resumable with ``Last-Event-ID``."""
        try:
            job = await self._owned_job(request)
            after = request.headers.get("last-event-id") or request.query_params.get(
                "last_event_id"
            )
            if after is not None and not self.jobs.valid_event_id(after):
                raise RequestError("not an event id of this job", "Last-Event-ID")
        except GatewayError as exc:
            return _map_error(exc)
        return StreamingResponse(
            self._sse(job.id, after), 200, SSE_HEADERS, media_type="text/event-stream"
        )

    async def _sse(self, job_id: str, after: str | None) -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        while True:
            if self._closing.is_set():
                yield b": gateway stopping, reconnect with Last-Event-ID\n\n"
                return
            try:
                events = await self._events_or_closing(job_id, after)
            except QueueError:
                yield b": queue unavailable, reconnect with Last-Event-ID\n\n"
                return
            if events is None:
                continue
            if not events:
                yield b": keepalive\n\n"
                continue
            for event in events:
                after = event.id
                yield (
                    b"id: "
                    + event.id.encode()
                    + b"\nevent: "
                    + event.type.encode()
                    + b"\ndata: "
                    + orjson.dumps(event.data)
                    + b"\n\n"
                )
                if event.type in ("done", "failed"):
                    return

    async def _events_or_closing(self, job_id: str, after: str | None) -> list[JobEvent] | None:
        """The next events of a job, or None when the gateway started stopping first."""
        fetch = asyncio.ensure_future(self.jobs.events(job_id, after, block_s=KEEPALIVE_S))
        stop = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait((fetch, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, QueueError):
                    await fetch
        if not fetch.done() or fetch.cancelled():
            return None
        events: list[JobEvent] = fetch.result()
        return events

    async def healthz(self, request: Request) -> Response:
        """Alive."""
        return Response(b'{"status":"ok"}', 200, media_type="application/json")

    async def readyz(self, request: Request) -> Response:
        """Dependencies reachable: 503 naming those that are not; the usage spool's backlog
        (informational: metering being down does not make the gateway unready)."""
        problems = await self._readiness()
        details = self._details() if self._details is not None else {}
        if problems:
            body = {"status": "unavailable", "problems": problems, **details}
            return Response(orjson.dumps(body), 503, media_type="application/json")
        body = {"status": "ready", **details}
        return Response(orjson.dumps(body), 200, media_type="application/json")

    async def openapi(self, request: Request) -> Response:
        """This gateway's OpenAPI document (its routed models in ``model``)."""
        if self._openapi is None:
            self._openapi = document_bytes(gateway_openapi(sorted(self.pipeline.pools)))
        return Response(self._openapi, 200, media_type="application/json")

    async def metrics(self, request: Request) -> Response:
        """Prometheus exposition."""
        return Response(generate_latest(self.registry), 200, media_type=CONTENT_TYPE_LATEST)

    def routes(self) -> list[Route]:
        """Starlette routes bound to this instance."""
        return [Route(path, getattr(self, name), methods=[m]) for path, name, m in ROUTES]
