"""The inference front door as a raw ASGI handler: the request path with nothing extra on it.

``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` (another method:
405 with ``Allow: POST``): authenticate,
parse, then :meth:`Pipeline.begin` (cache, admit, route); the upstream body is passed
through as it arrives. A watcher on ``receive`` notices a client that goes away and cancels
the pass-through, so the flight is finished as ``client_abort`` with the tokens seen so
far. Gateway errors become OpenAI-style JSON bodies here (:func:`error_parts`), the one
place, with the API module, where errors become HTTP statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from infermeter.kernel.asgi import BodyTooLarge as TooLarge
from infermeter.kernel.asgi import Scope, read_body
from infermeter.kernel.openai_errors import error_body
from infermeter.kernel.openapi import method_not_allowed
from infermeter.kernel.request_ids import new_request_id
from infermeter.kernel.tenancy import TenantResolver
from infermeter.serving.gateway.errors import (
    AuthError,
    BodyTooLarge,
    GatewayError,
    JobNotFound,
    ModelNotFound,
    QueueError,
    RequestError,
    Throttled,
    ThrottleUnavailable,
    TooManyJobs,
    UpstreamConnectError,
    UpstreamError,
)
from infermeter.serving.gateway.pipeline import (
    REQUEST_ID_HEADER,
    CacheReply,
    Caller,
    Flight,
    Pipeline,
)
from infermeter.serving.gateway.replay import json_body, sse_events
from infermeter.serving.gateway.requests import CHAT, COMPLETIONS, EMBEDDINGS, parse_inference

PATHS = frozenset({CHAT, COMPLETIONS, EMBEDDINGS})
OVERHEAD_HEADER = "x-infermeter-overhead-ms"
REQUEST_ID_SCOPE = "infermeter.request_id"
_RID = REQUEST_ID_HEADER.encode()
MAX_BODY_BYTES = 32 * 1024 * 1024
_JSON = (b"content-type", b"application/json")
_SSE = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def error_parts(exc: GatewayError) -> tuple[int, bytes, dict[str, str]]:
    """HTTP status, OpenAI-style JSON body and extra headers for a gateway error."""
    retry = {"retry-after": "1"}
    if isinstance(exc, BodyTooLarge):
        return 413, error_body(413, str(exc), "invalid_request_error"), {}
    if isinstance(exc, RequestError):
        return 400, error_body(400, str(exc), "invalid_request_error", exc.param), {}
    if isinstance(exc, AuthError):
        return 401, error_body(401, str(exc), "authentication_error"), {}
    if isinstance(exc, ModelNotFound):
        return 404, error_body(404, str(exc), "model_not_found", "model"), {}
    if isinstance(exc, JobNotFound):
        return 404, error_body(404, str(exc), "not_found_error", "id"), {}
    if isinstance(exc, Throttled):
        return 429, error_body(429, str(exc), "rate_limit_error"), dict(exc.headers)
    if isinstance(exc, TooManyJobs):
        return 429, error_body(429, str(exc), "rate_limit_error", "max_jobs_per_tenant"), {}
    if isinstance(exc, ThrottleUnavailable | QueueError):
        return 503, error_body(503, str(exc), "service_unavailable"), retry
    if isinstance(exc, UpstreamConnectError):
        return 503, error_body(503, str(exc), "upstream_unavailable"), retry
    if isinstance(exc, UpstreamError):
        return 502, error_body(502, str(exc), "upstream_error"), {}
    return 500, error_body(500, str(exc), "internal_error"), {}


def authenticate(resolver: TenantResolver, raw_headers: Iterable[tuple[bytes, bytes]]) -> Caller:
    """The caller of a request: a known API key, or the trusted gateway-secret headers."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
    attribution = resolver.resolve(headers)
    if attribution.source == "anonymous":
        if "authorization" not in headers:
            raise AuthError("Missing API key: send 'Authorization: Bearer <key>'.")
        raise AuthError("Incorrect API key provided.")
    return Caller(attribution.tenant, attribution.key_id, attribution.tier, attribution.tags)


def request_id_of(scope: Scope) -> str:
    """The request id of this HTTP exchange (minted once, kept in the ASGI scope)."""
    rid = scope.get(REQUEST_ID_SCOPE)
    if not isinstance(rid, str) or not rid:
        rid = new_request_id()
        scope[REQUEST_ID_SCOPE] = rid
    return rid


def with_request_id(scope: Scope, send: Any) -> Any:
    """Wrap ``send`` so the response carries ``x-infermeter-request-id`` (unless it has one)."""
    rid = request_id_of(scope).encode("latin-1")

    async def send_with_id(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(k.lower() == _RID for k, _ in headers):
                headers.append((_RID, rid))
                message = {**message, "headers": headers}
        await send(message)

    return send_with_id


def _headers(pairs: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs.items()]


class InferenceFront:
    """Serve the inference routes."""

    def __init__(
        self, pipeline: Pipeline, resolver: TenantResolver, registry: CollectorRegistry
    ) -> None:
        self.pipeline = pipeline
        self.resolver = resolver
        self.responses = Counter(
            "infermeter_gateway_inference_responses",
            "Inference responses by route and HTTP status",
            ["route", "code"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        route = scope["path"]
        if scope["method"] != "POST":
            await method_not_allowed(send, ("POST",))
            return
        rid = request_id_of(scope)
        rid_header = (_RID, rid.encode("latin-1"))
        try:
            body = await _read_body(receive)
            caller = authenticate(self.resolver, scope["headers"])
            req = parse_inference(route, body)
            begun = await self.pipeline.begin(caller, req, request_id=rid)
        except GatewayError as exc:
            status, payload, extra = error_parts(exc)
            self.responses.labels(route, str(status)).inc()
            await _send_whole(send, status, [_JSON, rid_header, *_headers(extra)], payload)
            return
        if isinstance(begun, CacheReply):
            await self._cached(send, begun)
            return
        flight = begun
        self.responses.labels(route, str(flight.status)).inc()
        meta = {
            **flight.headers,
            REQUEST_ID_HEADER: flight.request_id,
            OVERHEAD_HEADER: f"{flight.overhead_s * 1000:.3f}",
        }
        if not (req.stream and flight.status == 200):
            try:
                payload = await flight.read()
            except UpstreamError as exc:
                status, payload, extra = error_parts(exc)
                await _send_whole(send, status, [_JSON, rid_header, *_headers(extra)], payload)
                return
            meta.pop("content-length", None)
            await _send_whole(send, flight.status, _headers(meta), payload)
            return
        meta.pop("content-type", None)
        await self._stream(receive, send, flight, [*_SSE, *_headers(meta)])

    async def _stream(
        self, receive: Any, send: Any, flight: Flight, headers: list[tuple[bytes, bytes]]
    ) -> None:
        task = asyncio.current_task()
        state = {"streaming": True, "aborted": False}

        def on_message(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() or not state["streaming"] or task is None:
                return
            if fut.exception() is None and fut.result().get("type") == "http.disconnect":
                state["aborted"] = True
                task.cancel()

        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(on_message)
        chunks = flight.stream()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for chunk in chunks:
                if not state["streaming"]:
                    continue  # after [DONE]: only drain the upstream to its end
                if flight.tap.done:
                    # The chunk with [DONE] ends the response in the same write.
                    state["streaming"] = False
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
                else:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if state["streaming"]:
                state["streaming"] = False
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["aborted"]:
                raise
            if task is not None:
                task.uncancel()
        finally:
            state["streaming"] = False
            await chunks.aclose()
            watcher.cancel()

    async def _cached(self, send: Any, reply: CacheReply) -> None:
        req = reply.req
        self.responses.labels(req.endpoint, "200").inc()
        meta = {
            REQUEST_ID_HEADER: reply.request_id,
            "x-infermeter-cache": "hit",
            "x-infermeter-cache-similarity": f"{reply.hit.similarity:.4f}",
        }
        if not req.stream:
            payload = json_body(req, reply.hit.answer, reply.request_id)
            await _send_whole(send, 200, [_JSON, *_headers(meta)], payload)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_SSE, *_headers(meta)]})  # fmt: skip
        for event in sse_events(req, reply.hit.answer, reply.request_id):
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _read_body(receive: Any, limit: int = MAX_BODY_BYTES) -> bytes:
    try:
        return await read_body(receive, limit)
    except TooLarge as exc:
        raise BodyTooLarge(exc.limit) from exc
    except ConnectionResetError as exc:
        raise RequestError("client disconnected before sending the body") from exc


async def _send_whole(
    send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    with contextlib.suppress(OSError):
        await send({"type": "http.response.body", "body": body, "more_body": False})
